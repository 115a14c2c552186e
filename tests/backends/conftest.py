from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.backends.contract import CLUSTERS, Contract, Kind
from tests.backends.support import Started
from tests.brokers import BrokerServer


@pytest.fixture
def topic() -> str:
    """A fresh topic per test, so nothing another test left on the broker can arrive."""
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    """`await started(SomeBackend(...))`: a started backend, closed when the test ends."""
    backends = Started()
    yield backends
    await backends.close()


@pytest.fixture
def backend(kind: Kind, topic: str, started: Started, request: pytest.FixtureRequest) -> Contract:
    """The contract suite's (tests/backends/contract.py): instances of `kind`'s class on the session's broker."""
    if kind.broker == "local":
        return Contract(kind, None, f"local://{topic}", started, request)  # a bus of its own
    if kind.broker in CLUSTERS:  # the daemon's --key is the test's topic (durable mode places its streams by it)
        cluster = request.getfixturevalue(CLUSTERS[kind.broker][1])
        return Contract(kind, None, cluster.uri, started, request, key=topic)
    server: BrokerServer = request.getfixturevalue(f"{kind.broker}_server")
    return Contract(kind, server, server.uri, started, request)
