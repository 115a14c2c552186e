"""Shared helpers for the deploy suite: the repository's deploy files and the linters that check them."""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.utils import REPO, unavailable

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_DIR = REPO / "deploy" / "compose"
KUBE_DIR = REPO / "deploy" / "kubernetes"


def missing(what: str, install: str = "pip install -e '.[test]'") -> None:
    """Skip on a developer's machine, fail in CI: a lint that cannot run must never pass as green."""
    unavailable(f"{what} is not installed ({install})")


def tool(name: str, install: str = "pip install -e '.[test]'") -> str:
    """A program of the test venv (hadolint, check-jsonschema, kubectl): beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        missing(name, install)
    assert found is not None
    return found


#: OCI labels the syncar image must carry, with the format hadolint checks them against.
REQUIRED_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "text",
    "org.opencontainers.image.licenses": "spdx",
}


def required_labels() -> list[str]:
    return [arg for label, form in REQUIRED_LABELS.items() for arg in ("--require-label", f"{label}:{form}")]


def hadolint(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """hadolint at its strictest: every finding down to `style` fails."""
    # An empty config file shields the run from a stray ~/.config/hadolint.yaml or .hadolint.yaml;
    # --disable-ignore-pragma keeps `# hadolint ignore=` comments from silencing rules.
    args = [
        tool("hadolint"),
        "--config",
        "/dev/null",
        "--no-color",
        "--failure-threshold",
        "style",
        "--disable-ignore-pragma",
        *extra,
    ]
    return subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=30)


def module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(name)
        raise


def dockerfile_instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text() if text is None else text
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in logical]


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions grouped by stage; global ARGs (before the first FROM) are stage 0."""
    groups: list[list[tuple[str, str]]] = [[]]
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            groups.append([])
        groups[-1].append(instruction)
    return groups


def assignments(arguments: str) -> dict[str, str]:
    """KEY=value pairs of an ENV, LABEL or ARG line."""
    return dict(item.split("=", 1) for item in shlex.split(arguments) if "=" in item)


def image_env() -> dict[str, str]:
    """The environment the runtime stage sets, without PATH (which names the image's venv)."""
    env: dict[str, str] = {}
    for instruction, arguments in stages()[-1]:
        if instruction == "ENV":
            env.update(assignments(arguments))
    env.pop("PATH", None)
    return env


def stage_arg(stage: list[tuple[str, str]], name: str) -> str:
    """The default of a stage's `ARG name=default`."""
    for instruction, arguments in stage:
        if instruction == "ARG" and arguments.startswith(f"{name}="):
            return arguments.split("=", 1)[1]
    raise AssertionError(f"the stage has no ARG {name}=...")


def dockerfile_version() -> str:
    return stage_arg(stages()[-1], "VERSION")


def dockerfile_extras() -> str:
    """The extras the build stage installs syncar with (`syncar[EXTRAS]`)."""
    return stage_arg(stages()[1], "EXTRAS")


_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """A compose value as compose would see it with no variables set: `${X:-default}` is the default."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda found: found.group(2) or "", value).replace("$$", "$")
    return value


def settings_from_env(env: dict[str, str]) -> Any:
    """Validate `SYNCAR_*` variables as the daemon would: each must name a setting and hold a valid value."""
    from sidecar.config import Settings

    fields: dict[str, str] = {}
    for key, value in env.items():
        if key.startswith("SYNCAR_"):
            name = key.removeprefix("SYNCAR_").lower()
            assert name in Settings.model_fields, f"{key} is not a syncar setting"
            fields[name] = value
    return Settings.model_validate(fields)
