"""Real broker servers for the tests: started on free loopback ports in temp dirs, killed and restarted on demand.

Each broker module defines a `BrokerServer` subclass. The test session starts
each broker once (see `tests/contract/conftest.py`). A missing server binary
skips that broker's tests with a reason on a developer's machine and fails the
run in CI (`CI=true`), so a broken install can never pass as green.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from tests.utils import unavailable

START_TIMEOUT = 60.0


#: Ports free_port() handed out in this session, none twice.
_handed_out: set[int] = set()
_pick = random.Random()


def _ports_to_pick_from() -> range:
    """Loopback ports outside the kernel's ephemeral range where there are enough (a port in it can become an
    outgoing connection's source port between our probe and the server's bind); else the whole range above 1023."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(1024, 65536)
    below, above = range(1024, low), range(high + 1, 65536)
    wider = max(below, above, key=len)
    return wider if len(wider) >= 5000 else range(1024, 65536)


def free_port() -> int:
    """A loopback port nothing is bound to now, never handed out before in this session. The kernel's choice
    (bind to port 0) may repeat one: CI once gave a RabbitMQ node the same port for AMQP and TLS, and its TLS
    test spoke to the plain listener. A server binds its port seconds later, so a port is handed out only once."""
    ports = _ports_to_pick_from()
    for _ in range(1000):
        port = _pick.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {ports.start}-{ports.stop - 1} after 1000 tries")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def require_binary(name: str, *candidates: str) -> str:
    """Path of a server binary; skip (developer) or fail (CI) if it is not installed."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate)
        if found:
            return found
    unavailable(f"{name} is not installed (apt-get install {name})")


class BrokerServer(ABC):
    """One broker process the tests own; `uri` stays the same across restarts."""

    name: str

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"syncar-{self.name}-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log = (self.dir / "server.log").open("ab")

    @property
    @abstractmethod
    def uri(self) -> str:
        """What syncar's `--backend` takes to reach this server."""

    @abstractmethod
    def command(self) -> list[str]:
        """The server's command line."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        """True once the server accepts clients; brokers with a slow boot override this."""
        return port_open(self.port)

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process and return at once; `wait_ready()` waits for it (servers of a cluster start together)."""
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.dir,
            start_new_session=True,
        )

    def _log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for the failure's message: the temp dir is gone by the time anyone looks."""
        self._log.flush()
        tail = (self.dir / "server.log").read_text(errors="replace").splitlines()[-lines:]
        return "the end of its log:\n" + "\n".join(tail)

    def wait_ready(self) -> None:
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; {self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT}s; {self._log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash would; wait until the port is closed."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            # The session leader's group: rabbitmq-server is a shell script with an Erlang VM below it.
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)
        self.process = None
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.kill()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


Server = TypeVar("Server", bound=BrokerServer)


#: The servers `serve()` hands to tests, for `revive_served()`.
_served: list[BrokerServer] = []


def serve(server: Server) -> Iterator[Server]:
    """A fixture's body: start `server`, hand it to the tests, clean it up after them (even if it never started)."""
    try:
        server.start()
        _served.append(server)
        yield server
    finally:
        if server in _served:
            _served.remove(server)
        server.cleanup()


def revive_served() -> None:
    """Start again each served server that is down: a test killed it and failed before starting it again, and
    every later test of the session on that broker would fail too (tests/conftest.py calls this after each test)."""
    for server in _served:
        if server.process is None or server.process.poll() is not None:
            server.start()
