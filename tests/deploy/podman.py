"""Podman for the container tests: the image that scripts/image builds, and containers the tests start and remove.

No registry is reachable here, so scripts/image makes its own Debian base and builds the Dockerfile on it; every
podman command of the tests runs with the settings that script uses (`scripts/image env`). Rootful podman only:
the tests share bind-mounted socket directories with containers whose uids must be the host's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.brokers import require_binary
from tests.deploy.helpers import missing
from tests.utils import REPO

IMAGE_UID = 10001
SCRIPT = REPO / "scripts" / "image"
#: From nothing, scripts/image makes the base with mmdebstrap and builds the image: a few minutes on a busy machine.
BUILD_TIMEOUT = 900
TIMEOUT = 120


def podman_env() -> dict[str, str]:
    """The environment podman needs here (CONTAINERS_CONF from scripts/image); skips or fails without podman."""
    for binary in ("podman", "mmdebstrap"):
        require_binary(binary)
    if os.geteuid() != 0:
        missing("rootful podman (the container tests run as root)")
    result = subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, timeout=30, check=True)
    name, _, value = result.stdout.strip().removeprefix("export ").partition("=")
    assert name == "CONTAINERS_CONF", result.stdout
    return {**os.environ, name: value}


@dataclass
class Podman:
    env: dict[str, str]
    image: str = ""
    containers: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=self.env)
        if check:
            assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result

    def build(self) -> str:
        result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=self.env)
        assert result.returncode == 0, f"scripts/image failed:\n{result.stderr[-5000:]}"
        self.image = result.stdout.strip().splitlines()[-1]
        return self.image

    def name(self) -> str:
        """A container name this test owns: removed by `remove_all` whatever the test did with it."""
        self.containers.append(f"syncar-test-{uuid.uuid4().hex[:10]}")
        return self.containers[-1]

    def remove_all(self) -> None:
        if self.containers:
            # --ignore: those run with --rm may be gone already.
            self("rm", "--force", "--ignore", "--time", "0", *self.containers)
            self.containers.clear()

    def syncar(self, socket_dir: Path, *args: str, env: dict[str, str] | None = None, network: str = "none") -> str:
        """A syncar container of the image, hardened as deploy/ runs it, with `socket_dir` on /run/syncar."""
        name = self.name()
        variables = [f"--env={key}={value}" for key, value in (env or {}).items()]
        self(
            "run",
            "--detach",
            f"--name={name}",
            f"--network={network}",
            "--read-only",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            f"--volume={socket_dir}:/run/syncar",
            *variables,
            self.image,
            *args,
        )
        return name

    def inspect(self, name: str, template: str) -> str:
        return self("inspect", "--format", template, name).stdout.strip()


@contextmanager
def socket_dir() -> Iterator[Path]:
    """A host directory for a bind-mounted /run/syncar, owned by the image's user as the image's own is."""
    path = Path(tempfile.mkdtemp(prefix="syncar-ctr-", dir="/tmp"))
    os.chown(path, IMAGE_UID, IMAGE_UID)
    path.chmod(0o770)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
