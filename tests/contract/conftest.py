"""The contract suite's fixtures: every test runs on each broker x codec, between two real daemons."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.daemon import Daemon
from tests.brokers import BrokerServer
from tests.utils import run_daemon

BROKERS = [
    pytest.param("local", id="local"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
    pytest.param("rabbitmq", marks=pytest.mark.rabbitmq, id="rabbitmq"),
    pytest.param("nats", marks=pytest.mark.nats, id="nats"),
]
CODECS = ["syncar", "feathers-sync"]


@dataclass
class Pair:
    """Two instances on one broker: daemon `a` with socket `sock_a`, daemon `b` with `sock_b`."""

    a: Daemon
    b: Daemon
    sock_a: Path
    sock_b: Path
    key: str
    server: BrokerServer | None  # None for the local backend


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> BrokerServer | None:
    if request.param == "local":
        return None
    server: BrokerServer = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture(params=CODECS)
def codec(request: pytest.FixtureRequest) -> str:
    codec: str = request.param
    return codec


@pytest.fixture
async def pair(broker: BrokerServer | None, codec: str, sock_dir: Path) -> AsyncIterator[Pair]:
    # A fresh key per test (Dapr's runID): nothing another test left on the broker can arrive.
    key = f"contract-{uuid.uuid4().hex}"
    uri = broker.uri if broker is not None else f"local://{key}"
    async with contextlib.AsyncExitStack() as stack:
        daemons = [await stack.enter_async_context(
            run_daemon(sock_dir / f"{name}.sock", backend=uri, codec=codec, key=key, instance_id=f"{name}-{key[9:17]}"))
            for name in ("a", "b")]
        yield Pair(daemons[0], daemons[1], sock_dir / "a.sock", sock_dir / "b.sock", key, broker)
