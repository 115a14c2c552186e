from __future__ import annotations

import shutil
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.brokers import BrokerServer, revive_served, serve
from tests.brokers.nats import NatsCluster
from tests.brokers.rabbitmq import RabbitCluster
from tests.utils import RawClient


class Connect(Protocol):
    """The `connect` fixture: `await connect(socket)` or `await connect(socket, hello)`."""

    async def __call__(self, socket: Path, hello: dict[str, Any] | None = None) -> RawClient: ...


#: (cluster, seconds it took to start), printed at the end of the session.
CLUSTER_STARTS: list[tuple[str, float]] = []


@pytest.fixture(autouse=True)
def brokers_left_running() -> Iterator[None]:
    """After each test, the session's brokers are up again, even if the test killed one and failed before its
    restart: one failure stays one."""
    yield
    revive_served()


@pytest.fixture
def traced() -> Iterator[None]:
    """tracemalloc on for the test, to count what the code under test allocates and keeps."""
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short temp directory: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="syncar-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock(sock_dir: Path) -> Path:
    return sock_dir / "syncar.sock"


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """`await connect(socket, hello)`: a RawClient closed when the test ends."""
    clients: list[RawClient] = []

    async def factory(socket: Path, hello: dict[str, Any] | None = None) -> RawClient:
        client = await RawClient.connect(socket, hello)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


# Real brokers, one of each per test session, started on first use. The server classes skip (or, with
# CI=true, fail) when the binary is missing.


@pytest.fixture(scope="session")
def redis_server() -> Iterator[BrokerServer]:
    from tests.brokers.redis import RedisServer

    # Persistent, as a Redis backing durable mode must be: a SIGKILL then loses nothing it acknowledged.
    yield from serve(RedisServer(persistent=True))


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[Any]:
    """One master, one replica, three sentinels (tests/brokers/redis_sentinel.py); how long they took to start is
    printed at the end of the run."""
    from tests.brokers.redis_sentinel import SentinelGroup

    group = SentinelGroup()
    try:
        group.start()
        CLUSTER_STARTS.append(("redis sentinel group", group.start_seconds))
        yield group
    finally:
        group.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """Three masters and three replicas (tests/brokers/redis_cluster.py); a test that fails a master over leaves
    the cluster whole."""
    from tests.brokers.redis_cluster import RedisCluster

    cluster = RedisCluster()
    try:
        cluster.start()
        CLUSTER_STARTS.append(("redis (6 nodes)", cluster.start_seconds))
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[BrokerServer]:
    from tests.brokers.rabbitmq import RabbitServer

    # Its TLS listener starts with the node (tls_uri), so TLS costs no second boot.
    yield from serve(RabbitServer(tls=True))


@pytest.fixture(scope="session")
def nats_server() -> Iterator[BrokerServer]:
    from tests.brokers.nats import NatsServer

    yield from serve(NatsServer())


@pytest.fixture(scope="session")
def nats_cluster() -> Iterator[NatsCluster]:
    """Three nats-server -js routed to each other (tests marked `cluster`); a test that kills nodes calls
    `nats_cluster.whole()` at its end, so the next test finds all three."""
    cluster = NatsCluster()
    try:
        cluster.start()
        CLUSTER_STARTS.append(("nats (3 nodes)", cluster.start_seconds))
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[RabbitCluster]:
    """Three rabbitmq-server nodes clustered (tests marked `cluster`); a test that kills nodes calls
    `rabbitmq_cluster.whole()` at its end, so the next test finds all three."""
    cluster = RabbitCluster()
    try:
        cluster.start()
        CLUSTER_STARTS.append(("rabbitmq (3 nodes)", cluster.start_seconds))
        yield cluster
    finally:
        cluster.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, seconds in CLUSTER_STARTS:
        terminalreporter.write_line(f"cluster {name} started in {seconds:.2f}s")


@pytest.fixture(scope="session")
def redis_tls_server() -> Iterator[BrokerServer]:
    from tests.brokers.redis import RedisTlsServer

    yield from serve(RedisTlsServer())


@pytest.fixture(scope="session")
def nats_tls_server() -> Iterator[BrokerServer]:
    from tests.brokers.nats import NatsTlsServer

    yield from serve(NatsTlsServer())
