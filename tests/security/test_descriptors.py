"""File descriptors: strangers on the HTTP port, or too many apps, must not use up what the apps' socket needs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.utils import REPO, RawClient, SpawnedDaemon, http_get, wait_for

# Soft 128, hard 256: the daemon may raise its own soft limit to 256, then keeps 64 + 32 (HTTP) for itself.
LIMITS = ("prlimit", "--nofile=128:256")
CLIENTS = 256 - 64 - 32


async def test_idle_http_connections_cannot_cut_apps_off(sock: Path) -> None:
    daemon = SpawnedDaemon(sock, wrapper=LIMITS)
    idle: list[asyncio.StreamWriter] = []
    apps: list[RawClient] = []
    try:
        await daemon.ready()
        assert "file descriptor limit raised from 128 to 256" in daemon.log
        assert f"max clients lowered from 4096 to {CLIENTS}: the file descriptor limit is 256" in daemon.log
        for _ in range(300):  # more than the whole descriptor table, no socket access needed
            idle.append((await asyncio.open_connection("127.0.0.1", daemon.http_port))[1])
        assert (await http_get(daemon.http_port, "/healthz"))[0] == 200  # probes are not locked out either
        for _ in range(CLIENTS):
            apps.append(await RawClient.connect(sock, {}))
        extra = await RawClient.connect(sock)  # refused at once: sending it a hello could meet a closed socket
        refusal = await extra.frame()
        assert (refusal["type"], refusal["code"]) == ("error", "too_many_clients"), refusal
        await extra.close()
        await wait_for(lambda: "dropped the oldest idle one" in daemon.log, what="the eviction to be logged")
        assert (await http_get(daemon.http_port, "/healthz"))[0] == 200
        assert "Traceback" not in daemon.log
    finally:
        for writer in idle:
            writer.close()
        for app in apps:
            await app.close()
        daemon.kill()


def test_a_descriptor_limit_too_low_for_any_app_is_one_line(sock: Path) -> None:
    result = subprocess.run(
        [*LIMITS[:1], "--nofile=64:64", sys.executable, "-m", "sidecar", "run", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("syncar: max_clients: the file descriptor limit 64 is too low to serve any app")
    assert len(result.stderr.splitlines()) == 1


# The listener alone, in a process whose descriptor table the script fills up itself: what the daemon's caps are
# there to prevent, but a leak elsewhere could still bring.
FULL_TABLE = """
import asyncio, os, resource, sys, logging, uvloop
from pathlib import Path
from sidecar.listener import Listener
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

async def main():
    listener = Listener(Path(sys.argv[1]), 0o600, asyncio.Protocol, overflow=b'{"type":"error"}\\n')
    listener.bind()
    listener.serve()
    try:
        while True:
            os.open(os.devnull, os.O_RDONLY)
    except OSError:
        pass
    print("full", flush=True)
    await asyncio.sleep(60)

uvloop.run(main())
"""


async def test_running_out_of_descriptors_is_logged_and_the_app_told(sock: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FULL_TABLE, str(sock), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        async with asyncio.timeout(20):
            assert await process.stdout.readline() == b"full\n"
        app = await RawClient.connect(sock)
        assert await app.closed() == b'{"type":"error"}\n'
        await app.close()
    finally:
        process.kill()
        _, stderr = await process.communicate()
    assert b"socket: out of file descriptors (Too many open files), an app was refused" in stderr, stderr
