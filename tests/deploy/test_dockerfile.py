"""The Dockerfile: hadolint passes, and it builds the image the deploy manifests rely on."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar import __version__
from tests.deploy.helpers import (
    DOCKERFILE,
    DOCKERIGNORE,
    REQUIRED_LABELS,
    assignments,
    dockerfile_extras,
    dockerfile_version,
    hadolint,
    image_env,
    required_labels,
    settings_from_env,
    stages,
)


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE, *required_labels())
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is live: an unpinned apt install and a root runtime user are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:3.11-slim-bookworm\nRUN apt-get update && apt-get install -y gcc\n"
        "USER root\nCMD python -m sidecar run\n"
    )
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3008", "DL3009", "DL3002", "DL3025"):
        assert rule in result.stdout, f"{rule} not reported:\n{result.stdout}"


def test_base_image_and_stages() -> None:
    global_args, *build_stages = stages()
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in global_args
    assert len(build_stages) == 2, "a build stage and a runtime stage"
    assert build_stages[0][0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert build_stages[1][0] == ("FROM", "${PYTHON_IMAGE}")


def test_the_build_stage_installs_syncar_with_its_extras() -> None:
    """`--tracing` works in the image: the otel extra is built and installed, and `--build-arg EXTRAS=` leaves it out
    (pip takes no empty `[]` after a path, hence `${EXTRAS:+[...]}`)."""
    assert dockerfile_extras() == "otel"
    runs = " ".join(arguments for instruction, arguments in stages()[1] if instruction == "RUN")
    assert 'pip wheel --wheel-dir /wheels --constraint constraints.txt ".${EXTRAS:+[$EXTRAS]}"' in runs
    assert 'pip install --no-index --find-links /wheels "syncar${EXTRAS:+[$EXTRAS]}"' in runs


def test_runtime_stage_has_no_compilers_and_only_the_venv() -> None:
    runtime = stages()[-1]
    runs = " ".join(arguments for instruction, arguments in runtime if instruction == "RUN")
    for word in ("apt-get", "gcc", "build-essential", "pip "):
        assert word not in runs, f"the runtime stage runs {word!r}"
    copies = [arguments for instruction, arguments in runtime if instruction in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/syncar /opt/syncar"]


def test_runtime_contract() -> None:
    """What the compose file and the Kubernetes manifests count on."""
    runtime = dict(stages()[-1])  # the last of each instruction
    assert runtime["USER"] == "10001:10001", "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert json.loads(runtime["ENTRYPOINT"]) == ["syncar"]
    assert json.loads(runtime["CMD"]) == ["run"]
    assert runtime["VOLUME"] in ('["/run/syncar"]', "/run/syncar")
    assert runtime["EXPOSE"] == "9464"
    health = runtime["HEALTHCHECK"]
    assert json.loads(health[health.index(" CMD ") + 5 :]) == ["syncar", "health"]
    env = image_env()
    assert env["SYNCAR_SOCKET"] == "/run/syncar/syncar.sock"
    assert env["SYNCAR_HTTP"] == "0.0.0.0:9464"
    settings_from_env(env)
    assert "install -d -o 10001 -g 10001" in runtime["RUN"], "/run/syncar must belong to the syncar user"


def test_labels_and_version() -> None:
    labels: dict[str, str] = {}
    for instruction, arguments in stages()[-1]:
        if instruction == "LABEL":
            labels.update(assignments(arguments))
    assert set(REQUIRED_LABELS) <= set(labels)
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert dockerfile_version() == __version__, "bump ARG VERSION in the Dockerfile with sidecar.__version__"


def test_dockerignore_is_an_allowlist_of_what_the_build_copies() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "exclude everything, then allow what the build needs"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copied: set[str] = set()
    for instruction, arguments in stages()[1]:
        if instruction == "COPY" and not arguments.startswith("--from"):
            copied.update(source.rstrip("/") for source in arguments.split()[:-1])
    assert copied == allowed == {"pyproject.toml", "README.md", "constraints.txt", "sidecar", "backends"}
