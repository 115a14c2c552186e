"""Helpers shared by the test suites: embedded and spawned daemons, raw socket clients, waiting on conditions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest

from sidecar.config import Settings
from sidecar.daemon import Daemon
from sidecar.metrics import Metrics

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
#: A spawned daemon's start: its imports alone took 10 s at a load of 15 on 2 cores.
START_TIMEOUT = 30.0


def unavailable(message: str) -> NoReturn:
    """Skip on a developer's machine, fail in CI (`CI=true`): a missing tool or broker must never pass as green."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


#: The counter of dropped events, by `reason`: the one tests read most.
DROPPED = "syncar_events_dropped_total"


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample as /metrics shows it (`syncar_events_sent_total`, `reason="duplicate"`), read through the registry's
    public API; 0 for a labelled counter never counted, an error for a name the registry does not have."""
    value = metrics.registry.get_sample_value(name, labels)
    if value is None:
        families = {family.name for family in metrics.registry.collect()}
        assert any(name == family or name.startswith(f"{family}_") for family in families), f"no metric {name}"
        return 0.0
    return value


def syncar(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI (`python -m sidecar ARGS`) run to its end, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """One HTTP/1.1 request to 127.0.0.1:`port`: the status code and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(5):
        response = await reader.read()
    writer.close()
    head, _, body = response.decode().partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


async def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll `condition` until it holds; fail the test if it does not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """`wait_for` for a condition that must be asked for (a broker's state): poll `check` until it holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def run_daemon(socket: Path, **settings: Any) -> AsyncIterator[Daemon]:
    """An embedded daemon on `socket`, stopped (and its socket removed) on exit."""
    settings.setdefault("shutdown_timeout", 2.0)
    settings.setdefault("http", "127.0.0.1:0")
    daemon = Daemon(Settings(socket=socket, **settings), handle_signals=False)
    async with daemon:
        yield daemon


class RawClient:
    """Talks to the socket in bytes, bypassing sidecar.client, to test exactly what is on the wire."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, socket: Path, hello: dict[str, Any] | None = None) -> RawClient:
        reader, writer = await asyncio.open_unix_connection(socket, limit=64 * 1024 * 1024)
        client = cls(reader, writer)
        if hello is not None:
            await client.send({"type": "hello", **hello})
            welcome = await client.frame()
            assert welcome["type"] == "welcome", welcome
            client.welcome = welcome
        return client

    welcome: dict[str, Any]

    async def send(self, frame: dict[str, Any] | bytes) -> None:
        self.writer.write(frame if isinstance(frame, bytes) else orjson.dumps(frame) + b"\n")
        await self.writer.drain()

    async def frame(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            line = await self.reader.readline()
        assert line, "connection closed by syncar"
        frame: dict[str, Any] = orjson.loads(line)
        return frame

    async def frame_of(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame of type `kind`, skipping others (status frames, say)."""
        async with asyncio.timeout(timeout):
            while (frame := await self.frame()).get("type") != kind:
                pass
        return frame

    async def events(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        return [await self.frame_of("event", timeout) for _ in range(count)]

    async def closed(self, timeout: float = TIMEOUT) -> bytes:
        """Read until syncar closes the connection; return what came."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def publish_frame(path: str = "messages", event: str = "created", data: Any = None, **extra: Any) -> dict[str, Any]:
    return {"type": "publish", "path": path, "event": event, "data": data, **extra}


# `python -c RUN_AS uid args...`: the CLI as another user. Python and its standard library live under /root, which
# other users cannot enter, so what the daemon needs is imported before root is given up.
RUN_AS = """
import os, sys
import asyncio, backends.local, sidecar.cli, sidecar.commands, sidecar.daemon, uvloop
uid = int(sys.argv[1])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
sys.exit(sidecar.cli.main(sys.argv[2:]))
"""


class SpawnedDaemon:
    """`python -m sidecar run` in a child process, for signals, exit codes and memory.

    `user`: run as this uid (the test runs as root). `log_dir`: where the log goes, if not next to the socket.
    `wrapper`: a command that runs the daemon, such as `("prlimit", "--nofile=256:512")`.
    """

    def __init__(
        self,
        socket: Path,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "daemon",
        user: int | None = None,
        log_dir: Path | None = None,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        self.socket = socket
        self.log_path = (log_dir or socket.parent) / f"{name}.log"
        self._log = self.log_path.open("wb")
        if "--http" not in args:
            args = ("--http", "127.0.0.1:0", *args)
        command = ["-m", "sidecar"] if user is None else ["-c", RUN_AS, str(user)]
        self.process = subprocess.Popen(
            [*wrapper, sys.executable, *command, "run", "--socket", str(socket), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    async def ready(self, timeout: float = START_TIMEOUT) -> SpawnedDaemon:
        try:
            await wait_for(
                lambda: "ready: apps may connect" in self.log or self.process.poll() is not None,
                timeout,
                "the daemon to start",
            )
            assert self.process.poll() is None, f"daemon exited with {self.process.returncode}:\n{self.log}"
        except AssertionError:
            self.kill()  # killed, reaped and its log closed, whatever the caller does next: nothing left to leak
            raise
        return self

    @property
    def http_port(self) -> int:
        found = re.search(r"http on [^ ]+:(\d+) ", self.log)
        assert found, f"no http line in the log:\n{self.log}"
        return int(found.group(1))

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        """CPU time the daemon has used so far, user and system (in clock ticks of 10 ms, usually)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def exited(self, timeout: float = TIMEOUT) -> int:
        await wait_for(lambda: self.process.poll() is not None, timeout, "the daemon to exit")
        self._log.close()
        return self.process.returncode

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return await self.exited(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
