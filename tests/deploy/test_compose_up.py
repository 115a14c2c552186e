"""deploy/compose brought up with podman-compose, and the demo of its README run as written: a message created
on app-a shows up at the example's socket.io client on app-b and in `syncar tail` on syncar-b.

No registry is reachable, so the broker and the app's Node base are stand-ins built from the local base image
(stand-ins/), named by an override file; everything else is the compose file as users run it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.brokers import free_port
from tests.deploy.helpers import COMPOSE_DIR, missing, tool
from tests.deploy.podman import TIMEOUT, Podman
from tests.utils import wait_for

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

STAND_INS = Path(__file__).parent / "stand-ins"
REDIS = "localhost/syncar-stand-in-redis:7"
NODE = "localhost/syncar-stand-in-node:20"
#: Runs a README line with `docker compose` meaning podman-compose on this project.
DOCKER = 'docker() { [ "$1" = compose ] && shift; exec "$PODMAN_COMPOSE" $COMPOSE_FILES "$@"; }\n'


def readme_commands() -> dict[str, str]:
    """The README's demo commands: the tail, the POST on app-a and the chat client on app-b."""
    text = (COMPOSE_DIR / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    commands = [command.strip() for block in blocks for command in re.split(r"\n(?=docker )", block)]
    found = {
        "tail": [c for c in commands if c.startswith("docker compose run --rm syncar-b tail")],
        "create": [c for c in commands if c.startswith("docker compose exec app-a") and "POST" in c],
        "stream": [c for c in commands if c.startswith("docker compose exec app-b") and "client.js" in c],
    }
    assert all(len(matches) == 1 for matches in found.values()), f"the README's demo changed: {found}"
    return {key: matches[0] for key, matches in found.items()}


def stand_in_contexts(root: Path) -> dict[str, Path]:
    """Build contexts: nothing for Redis (Debian's package), this host's node and npm for Node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing("node and npm")
    assert node is not None and npm is not None
    (root / "redis").mkdir()
    (root / "node").mkdir()
    shutil.copy2(os.path.realpath(node), root / "node" / "node")
    shutil.copytree(Path(os.path.realpath(npm)).parents[1], root / "node" / "npm", symlinks=True)
    return {"redis": root / "redis", "node": root / "node"}


@dataclass
class Project:
    podman: Podman
    env: dict[str, str]
    metrics_ports: dict[str, int]  # pair -> the host's loopback port published for its syncar's 9464

    def container(self, service: str) -> str:
        return f"{self.env['COMPOSE_PROJECT_NAME']}_{service}_1"

    async def shell(self, command: str) -> asyncio.subprocess.Process:
        """A README command, in its own process group so the test can stop all it started."""
        return await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            DOCKER + command,
            cwd=COMPOSE_DIR,
            env=self.env,
            start_new_session=True,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    def compose(self, *args: str) -> None:
        result = subprocess.run(
            [self.env["PODMAN_COMPOSE"], *self.env["COMPOSE_FILES"].split(), *args],
            cwd=COMPOSE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"podman-compose {' '.join(args)}:\n{result.stdout}{result.stderr[-5000:]}"

    def clients(self, pair: str) -> float:
        """syncar_clients of a pair's syncar, through the port the compose file publishes on the loopback."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_ports[pair]}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        found = re.search(r"^syncar_clients (\S+)$", metrics, re.MULTILINE)
        assert found, metrics
        return float(found.group(1))


@pytest.fixture
async def project(podman: Podman, tmp_path: Path) -> AsyncIterator[Project]:
    base = podman.inspect(podman.image, '{{index .Config.Labels "org.opencontainers.image.base.name"}}')
    for name, context in stand_in_contexts(tmp_path).items():
        podman(
            "build",
            "--pull=never",
            "--format=docker",
            f"--build-arg=BASE={base}",
            "--tag",
            REDIS if name == "redis" else NODE,
            "--file",
            str(STAND_INS / f"{name}.Containerfile"),
            str(context),
            timeout=600,
        )
    # The stand-ins in place of the registry's images, and free loopback ports for the metrics in place of 9464
    # and 9465 (`!override`: compose would append to the list).
    override = tmp_path / "stand-ins.yml"
    ports = {pair: free_port() for pair in ("a", "b")}
    override.write_text(
        f"services:\n  broker:\n    image: {REDIS}\n"
        + "".join(
            f"  app-{pair}:\n    build:\n      args: {{NODE_IMAGE: {NODE}}}\n"
            f'  syncar-{pair}:\n    ports: !override ["127.0.0.1:{port}:9464"]\n'
            for pair, port in ports.items()
        )
    )
    name = f"syncar-test-{uuid.uuid4().hex[:8]}"
    env = {
        **podman.env,
        "COMPOSE_PROJECT_NAME": name,
        "PODMAN_COMPOSE": tool("podman-compose"),
        "COMPOSE_FILES": f"-p {name} -f docker-compose.yml -f {override}",
    }
    project = Project(podman, env, ports)
    try:
        project.compose("build", "app-a", "app-b")
        project.compose("up", "--detach")
        yield project
    finally:
        leftovers = podman(
            "ps", "--all", "--quiet", f"--filter=label=io.podman.compose.project={name}", check=False
        ).stdout.split()
        if leftovers:
            podman("rm", "--force", "--time", "0", *leftovers, check=False)
        project.compose("down", "--volumes")


async def test_the_readme_demo_passes(project: Project) -> None:
    podman = project.podman
    for pair in ("a", "b"):
        syncar, app = project.container(f"syncar-{pair}"), project.container(f"app-{pair}")

        def healthy(syncar: str = syncar) -> bool:
            return podman("exec", syncar, "syncar", "health", "--ready", check=False).returncode == 0

        def connected(app: str = app, pair: str = pair) -> bool:
            return f"connected to syncar syncar-{pair}" in podman("logs", app).stdout

        await wait_for(healthy, timeout=TIMEOUT, what=f"{syncar} ready")
        await wait_for(connected, timeout=TIMEOUT, what=f"{app} connected to its syncar")

    commands = readme_commands()
    started = [await project.shell(commands["stream"]), await project.shell(commands["tail"])]
    try:
        stream, tail = started
        assert stream.stdout is not None and tail.stdout is not None
        hello = await asyncio.wait_for(stream.stdout.readline(), TIMEOUT)
        assert json.loads(hello) == {"connected": "http://127.0.0.1:3030"}
        await wait_for(lambda: project.clients("b") == 2, timeout=TIMEOUT, what="tail connected to syncar-b")

        create = await project.shell(commands["create"])
        out, err = await asyncio.wait_for(create.communicate(), TIMEOUT)
        assert create.returncode == 0, err.decode()[-3000:]
        created = json.loads(out.decode().strip().splitlines()[-1])
        assert created["text"] == "hello"

        line = (await asyncio.wait_for(tail.stdout.readline(), TIMEOUT)).decode()
        _, origin, path, event, data = line.split(" ", 4)
        assert (origin, path, event, json.loads(data)) == ("syncar-a", "messages", "created", created)
        shown = json.loads(await asyncio.wait_for(stream.stdout.readline(), TIMEOUT))
        assert shown == {"event": "created", "data": created}
    finally:
        for process in started:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
