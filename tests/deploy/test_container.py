"""The image itself, built by scripts/image and run with podman: hardened as deploy/ runs it, serving apps on the
host and in other containers through a bind-mounted socket directory, healthy, stopping cleanly, relaying through
Redis between two containers.
"""

from __future__ import annotations

import asyncio
import errno
import json
import uuid
from pathlib import Path

import pytest

from tests.brokers import BrokerServer, free_port
from tests.conftest import Connect
from tests.deploy.podman import IMAGE_UID, TIMEOUT, Podman, socket_dir
from tests.utils import publish_frame, wait_for

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

#: An app in a container: the image's Python, the standard library alone, the protocol in raw frames. It says
#: hello, publishes with an ack, waits for one event, printing each frame it waits for; or prints why it could
#: not connect.
APP = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect("/run/syncar/syncar.sock")
except OSError as exc:
    print(json.dumps({"refused": exc.errno}), flush=True)
    sys.exit(0)
stream = sock.makefile("rwb")
def send(frame):
    stream.write(json.dumps(frame).encode() + b"\\n")
    stream.flush()
def until(kind):
    while (frame := json.loads(stream.readline()))["type"] != kind:
        pass
    print(json.dumps(frame), flush=True)
send({"type": "hello", "name": "container-app"})
until("welcome")
send({"type": "publish", "path": "messages", "event": "created", "data": {"text": "from a container"},
      "id": "c1", "ack": True})
until("ack")
until("event")
"""
OTHER_UID = 20000


async def ready(podman: Podman, name: str, socket: Path) -> None:
    """The container's socket is there and `syncar health --ready` says so."""

    def listening() -> bool:
        if socket.exists():
            return True
        running = podman.inspect(name, "{{.State.Running}}")
        assert running == "true", f"{name} exited:\n{podman('logs', name).stderr}"
        return False

    await wait_for(listening, timeout=60, what=f"{name}'s socket")
    podman("exec", name, "syncar", "health", "--ready")


def app_args(podman: Podman, volume: Path, *groups: str) -> list[str]:
    """`podman run` of the app above as uid 20000, hardened like syncar, with the socket's directory."""
    return [
        "run",
        "--rm",
        f"--name={podman.name()}",
        "--network=none",
        "--read-only",
        "--cap-drop=ALL",
        f"--user={OTHER_UID}:{OTHER_UID}",
        *(f"--group-add={group}" for group in groups),
        f"--volume={volume}:/run/syncar",
        "--entrypoint=python",
        podman.image,
        "-c",
        APP,
    ]


async def test_runs_as_its_user_on_a_read_only_root_without_capabilities(podman: Podman, volume: Path) -> None:
    name = podman.syncar(volume)
    await ready(podman, name, volume / "syncar.sock")
    status = dict(line.split(":", 1) for line in podman("exec", name, "cat", "/proc/1/status").stdout.splitlines())
    assert status["Uid"].split() == [str(IMAGE_UID)] * 4 and status["Gid"].split() == [str(IMAGE_UID)] * 4
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, f"{capabilities}: {status[capabilities]}"
    assert status["NoNewPrivs"].strip() == "1"
    assert podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")[1:3] == ["/opt/syncar/bin/syncar", "run"]
    mounts = [line.split() for line in podman("exec", name, "cat", "/proc/1/mounts").stdout.splitlines()]
    root = [options.split(",") for _, point, _, options, *_ in mounts if point == "/"]
    assert root and "ro" in root[-1], mounts
    socket = (volume / "syncar.sock").stat()
    assert (socket.st_uid, socket.st_gid, socket.st_mode & 0o777) == (IMAGE_UID, IMAGE_UID, 0o660)


async def test_apps_on_the_host_and_in_a_container_of_its_group_exchange_events(
    podman: Podman, volume: Path, connect: Connect
) -> None:
    name = podman.syncar(volume)
    await ready(podman, name, volume / "syncar.sock")
    host = await connect(volume / "syncar.sock", {"name": "host-app"})
    app = await asyncio.create_subprocess_exec(
        "podman",
        *app_args(podman, volume, str(IMAGE_UID)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=podman.env,
    )
    stdout = app.stdout  # a local: mypy keeps its narrowing inside frame() below
    assert stdout is not None

    async def frame() -> dict[str, object]:
        line = await asyncio.wait_for(stdout.readline(), TIMEOUT)
        assert line, f"the app in the container stopped: {await app.stderr.read() if app.stderr else b''!r}"
        found: dict[str, object] = json.loads(line)
        return found

    try:
        welcome = await frame()
        assert welcome["type"] == "welcome" and welcome["instance"] == host.welcome["instance"]
        assert await frame() == {"type": "ack", "id": "c1"}
        event = await host.frame_of("event")
        assert (event["origin"], event["path"], event["event"], event["data"]) == (
            host.welcome["instance"],
            "messages",
            "created",
            {"text": "from a container"},
        )
        await host.send(publish_frame(data={"text": "from the host"}))
        event = await frame()
        assert (event["type"], event["data"]) == ("event", {"text": "from the host"})
        assert await asyncio.wait_for(app.wait(), TIMEOUT) == 0
    finally:
        if app.returncode is None:
            app.kill()
            await app.wait()


@pytest.mark.parametrize("directory_mode", [0o770, 0o771], ids=["as-the-image-makes-it", "open-to-traverse"])
async def test_an_app_outside_its_group_is_refused(
    podman: Podman, volume: Path, connect: Connect, directory_mode: int
) -> None:
    """Refused by the directory the image makes (0770), and by the socket's own mode (0660) when the directory
    lets anyone through."""
    volume.chmod(directory_mode)
    name = podman.syncar(volume)
    await ready(podman, name, volume / "syncar.sock")
    host = await connect(volume / "syncar.sock", {"name": "host-app"})
    result = podman(*app_args(podman, volume))
    assert json.loads(result.stdout) == {"refused": errno.EACCES}
    await host.send({"type": "ping"})
    assert (await host.frame())["type"] == "pong"


async def test_health_and_the_image_healthcheck_answer_inside(podman: Podman, volume: Path) -> None:
    name = podman.syncar(volume)
    await ready(podman, name, volume / "syncar.sock")
    assert podman("exec", name, "syncar", "health").returncode == 0
    assert podman("exec", name, "syncar", "health", "--ready").returncode == 0
    # The image's HEALTHCHECK survived the build (the OCI format drops it) and passes; podman runs it on demand
    # (it needs systemd's timers to run it by itself).
    healthcheck = json.loads(
        podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", podman.image).stdout
    )
    assert healthcheck["Test"] == ["CMD", "syncar", "health"]
    assert podman("healthcheck", "run", name).returncode == 0


async def test_tracing_runs_in_the_image(podman: Podman, volume: Path) -> None:
    """The image carries the otel extra: `--tracing` starts (without it the start stops with exit 2). No collector
    is reachable (--network=none): the spans' export fails in the background and the daemon serves on."""
    name = podman.syncar(volume, env={"SYNCAR_TRACING": "true"})
    await ready(podman, name, volume / "syncar.sock")
    assert podman("exec", name, "syncar", "health").returncode == 0


async def test_sigterm_exits_0_and_removes_the_socket(podman: Podman, volume: Path, connect: Connect) -> None:
    name = podman.syncar(volume)
    socket = volume / "syncar.sock"
    await ready(podman, name, socket)
    app = await connect(socket, {"name": "host-app"})
    podman("stop", "--time", "15", name)
    assert podman.inspect(name, "{{.State.ExitCode}}") == "0", podman("logs", name).stderr
    assert not socket.exists()
    await app.closed()


async def test_tail_in_a_container_stops_on_sigterm(podman: Podman, volume: Path) -> None:
    """The commands are pid 1 of their container, and the kernel drops a signal pid 1 has no handler for:
    `syncar tail` must end on `podman stop` rather than wait to be killed (exit 137)."""
    daemon = podman.syncar(volume)
    await ready(podman, daemon, volume / "syncar.sock")
    tail = podman.syncar(volume, "tail")
    await wait_for(
        lambda: "client connected: syncar-tail" in podman("logs", daemon).stderr, timeout=TIMEOUT, what="tail connected"
    )
    podman("stop", "--time", "10", tail)
    assert podman.inspect(tail, "{{.State.ExitCode}}") == "0", podman("logs", tail).stderr


@pytest.mark.redis
async def test_two_containers_relay_events_through_redis(
    podman: Podman, redis_server: BrokerServer, connect: Connect
) -> None:
    """Both on the host's network namespace, reaching the session's Redis on the loopback."""
    key = f"container-test-{uuid.uuid4().hex[:8]}"
    with socket_dir() as dir_a, socket_dir() as dir_b:
        apps = {}
        for instance, directory in (("ctr-a", dir_a), ("ctr-b", dir_b)):
            env = {
                "SYNCAR_BACKEND": redis_server.uri,
                "SYNCAR_KEY": key,
                "SYNCAR_INSTANCE_ID": instance,
                "SYNCAR_HTTP": f"127.0.0.1:{free_port()}",
            }
            name = podman.syncar(directory, env=env, network="host")
            await ready(podman, name, directory / "syncar.sock")
            apps[instance] = await connect(directory / "syncar.sock", {"name": f"app-{instance}"})
        for origin, receiver in (("ctr-a", "ctr-b"), ("ctr-b", "ctr-a")):
            await apps[origin].send(publish_frame(data={"from": origin}))
            event = await apps[receiver].frame_of("event")
            assert (event["origin"], event["data"]) == (origin, {"from": origin})
