"""The commands the image runs, run outside Docker (no engine here): a wheel built from the image's build
context, installed into a fresh venv, then `syncar --version`, `syncar run` with the image's environment,
`syncar health` (the HEALTHCHECK) and `syncar health --ready` (the compose healthcheck), and `docker stop`'s
SIGTERM. As root, the daemon runs as the image's uid 10001 with HOME=/nonexistent, as in the image.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest

from sidecar import __version__
from tests.brokers import free_port
from tests.deploy.helpers import DOCKERIGNORE, dockerfile_extras, dockerfile_version, image_env
from tests.utils import REPO, wait_for

# Building the wheel and installing its dependencies from the package registry takes a while, once per session.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IMAGE_UID = 10001
#: Debian's interpreter, like the image's a plain 3.11 that any user may run (a pyenv one under /root is not).
SYSTEM_PYTHON = Path("/usr/bin/python3.11")


@dataclass(frozen=True)
class ImageVenv:
    bin: Path
    as_image_user: bool  # run the daemon as uid 10001 (needs root and an interpreter that user may run)

    def command(self, *args: str) -> list[str]:
        return [str(self.bin / "syncar"), *args]

    @property
    def uid(self) -> int | None:
        """For Popen's user= and group=: None keeps the test's own user."""
        return IMAGE_UID if self.as_image_user else None

    def run(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            cwd="/",
            user=self.uid,
            group=self.uid,
            extra_groups=[] if self.as_image_user else None,
        )

    async def spawn(self, *args: str, env: dict[str, str], stdout: Any, stderr: Any) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.command(*args),
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd="/",
            user=self.uid,
            group=self.uid,
            extra_groups=[] if self.as_image_user else None,
        )


def build_context(into: Path) -> None:
    """Copy what .dockerignore lets into the Docker build context (it is an allowlist: see test_dockerfile)."""
    for line in DOCKERIGNORE.read_text().splitlines():
        if line.startswith("!"):
            source = REPO / line[1:].strip().rstrip("/")
            if source.is_dir():
                shutil.copytree(
                    source, into / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.pyd")
                )
            else:
                shutil.copy2(source, into / source.name)


def run(*args: str | Path) -> None:
    result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, f"{' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="session")
def image_venv() -> Iterator[ImageVenv]:
    root = Path(tempfile.mkdtemp(prefix="syncar-image-", dir="/tmp"))
    try:
        root.chmod(0o755)  # the image user must reach the venv
        context, wheels, venv = root / "context", root / "wheels", root / "venv"
        context.mkdir()
        build_context(context)
        run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-w",
            wheels,
            context,
        )
        (wheel,) = wheels.glob("syncar-*.whl")
        python = SYSTEM_PYTHON if SYSTEM_PYTHON.is_file() else Path(sys.executable)
        run(python, "-m", "venv", venv)
        # As the image's `pip wheel --constraint constraints.txt`: the dependencies, and the extras the image
        # installs, at their pinned versions.
        run(
            venv / "bin" / "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "--constraint",
            context / "constraints.txt",
            f"{wheel}[{extras}]" if (extras := dockerfile_extras()) else wheel,
        )
        yield ImageVenv(venv / "bin", as_image_user=os.geteuid() == 0 and python == SYSTEM_PYTHON)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def run_dir(image_venv: ImageVenv) -> Iterator[Path]:
    """The /run/syncar volume: a directory owned by the user syncar runs as."""
    path = Path(tempfile.mkdtemp(prefix="syncar-run-", dir="/tmp"))
    if image_venv.as_image_user:
        os.chown(path, IMAGE_UID, IMAGE_UID)
        path.chmod(0o770)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def container_env(venv: ImageVenv, **settings: str) -> dict[str, str]:
    """The image's ENV, its PATH and the HOME of a user without one; nothing from the test's environment."""
    return {
        "PATH": f"{venv.bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
        **image_env(),
        **settings,
    }


def test_version(image_venv: ImageVenv) -> None:
    result = image_venv.run("--version", env=container_env(image_venv))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"syncar {__version__}" == f"syncar {dockerfile_version()}"


@pytest.mark.parametrize("tracing", [False, True], ids=["plain", "tracing"])
async def test_run_health_and_stop_as_in_the_image(image_venv: ImageVenv, run_dir: Path, tracing: bool) -> None:
    """As the image runs it, and with `--tracing` on, which needs the otel extra the image installs."""
    sock = run_dir / "syncar.sock"
    port = free_port()
    # The image listens on 0.0.0.0; tests stay on loopback. `syncar health` is still given the image's
    # 0.0.0.0 form below, which it must turn into a loopback address to ask.
    env = container_env(
        image_venv,
        SYNCAR_SOCKET=str(sock),
        SYNCAR_HTTP=f"127.0.0.1:{port}",
        SYNCAR_INSTANCE_ID="image-test",
        SYNCAR_SHUTDOWN_TIMEOUT="5",
    )
    if tracing:  # no collector: the spans' export fails in the background, the daemon serves on
        env |= {"SYNCAR_TRACING": "true", "SYNCAR_TRACING_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces"}
    log_path = run_dir / "daemon.log"
    with log_path.open("wb") as log:
        daemon = await image_venv.spawn("run", env=env, stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        await wait_for(lambda: sock.is_socket() or daemon.returncode is not None, what="the socket")
        assert daemon.returncode is None, f"syncar exited with {daemon.returncode}:\n{log_path.read_text()}"
        assert sock.stat().st_mode & 0o777 == 0o660
        if image_venv.as_image_user:
            assert sock.stat().st_uid == IMAGE_UID

        health_env = {**env, "SYNCAR_HTTP": f"0.0.0.0:{port}"}
        for args in (("health",), ("health", "--ready")):
            probe = await image_venv.spawn(*args, env=health_env, stdout=PIPE, stderr=PIPE)
            async with asyncio.timeout(30):
                out, err = await probe.communicate()
            assert probe.returncode == 0, f"syncar {' '.join(args)}: {out.decode()}{err.decode()}"

        daemon.send_signal(signal.SIGTERM)  # what `docker stop` and the kubelet send
        async with asyncio.timeout(10):
            code = await daemon.wait()
        assert code == 0, log_path.read_text()
        assert not sock.exists(), "the socket file must be removed on a clean stop"
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
