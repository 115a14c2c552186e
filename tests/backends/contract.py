"""The backend contract suite's parametrisation: every class `backends.load_backend()` picks, as a `Kind` (a broker
in one mode), and the `backend` fixture (tests/backends/conftest.py) that starts instances of it on the session's
real brokers (tests/conftest.py). The suite is test_contract*.py:

- test_contract.py: what every backend promises (backends/base.py), local included;
- test_contract_brokers.py: a broker away at start, TLS, a broker restarted;
- test_contract_features.py: what a class declares in `features`, both ways (Dapr's conformance suite does the same):
  a class that declares a feature shows it, one that does not must not, so no class can misreport what it supports.

The per-broker modules keep only what is their broker's own: ACLs, topology and names on the broker, TLS details,
URI options, limits, faults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from backends import BACKENDS, load_backend
from backends.base import Backend, BackendConfig, BackendState, Feature, Mode
from tests.backends.support import Started
from tests.brokers import BrokerServer

#: The contract's name of each broker -> its URI scheme.
SCHEMES = {"local": "local", "redis": "redis", "rabbitmq": "amqp", "nats": "nats"}
#: Broker clusters the core promises (test_contract.py) also run on: name -> scheme, and the session fixture that
#: starts it once. Their failovers are tested apart (tests/backends/test_redis_cluster.py, tests/faults).
CLUSTERS = {"redis-cluster": ("redis+cluster", "redis_cluster")}


@dataclass(frozen=True)
class Kind:
    """One backend class: a broker in one mode."""

    broker: str
    mode: Mode

    @property
    def cls(self) -> type[Backend]:
        scheme = SCHEMES[self.broker] if self.broker in SCHEMES else CLUSTERS[self.broker][0]
        return load_backend(f"{scheme}://host", self.mode)

    @property
    def marks(self) -> list[pytest.MarkDecorator]:
        if self.broker in CLUSTERS:
            return [pytest.mark.redis, pytest.mark.cluster]
        return [] if self.broker == "local" else [getattr(pytest.mark, self.broker)]

    def __str__(self) -> str:
        return f"{self.broker}-{self.mode}"


KINDS = [Kind(broker, mode) for broker, scheme in SCHEMES.items() for mode in Mode if mode in BACKENDS[scheme]]
CLUSTER_KINDS = [Kind(name, mode) for name, (scheme, _) in CLUSTERS.items() for mode in BACKENDS[scheme]]


def kinds(select: Callable[[Kind], bool] = lambda kind: True, *, clusters: bool = False) -> pytest.MarkDecorator:
    """Run a test on the kinds `select` keeps (all by default), each marked with its broker; with `clusters`, on
    the broker clusters too."""
    return pytest.mark.parametrize(
        "kind",
        [
            pytest.param(kind, id=str(kind), marks=kind.marks)
            for kind in (*KINDS, *(CLUSTER_KINDS if clusters else ()))
            if select(kind)
        ],
    )


brokered = kinds(lambda kind: kind.broker != "local")


def declaring(feature: Feature) -> pytest.MarkDecorator:
    return kinds(lambda kind: feature in kind.cls.features)


def not_declaring(feature: Feature) -> pytest.MarkDecorator:
    return kinds(lambda kind: feature not in kind.cls.features)


class Contract:
    """`await backend("a")`: a started instance "a" of the class under test, closed when the test ends."""

    def __init__(
        self,
        kind: Kind,
        server: BrokerServer | None,
        uri: str,
        started: Started,
        request: pytest.FixtureRequest,
        *,
        key: str | None = None,
    ) -> None:
        self.kind, self.server, self.uri, self.key = kind, server, uri, key
        self.cls = kind.cls
        self._started = started
        self._request = request

    def config(self, instance_id: str, *, uri: str | None = None, echo: bool = True) -> BackendConfig:
        return BackendConfig(uri or self.uri, instance_id, 2.0, mode=self.kind.mode, echo=echo, key=self.key)

    async def __call__(
        self,
        instance_id: str,
        *,
        uri: str | None = None,
        echo: bool = True,
        on_state: Callable[[BackendState], None] | None = None,
    ) -> Backend:
        return await self._started(self.cls(self.config(instance_id, uri=uri, echo=echo), on_state=on_state))

    @property
    def tls_uri(self) -> str:
        """The broker's TLS listener, with the test CA and a client certificate in the URI."""
        if self.kind.broker == "rabbitmq":
            tls_uri: str = getattr(self.server, "tls_uri")  # noqa: B009 (RabbitServer's, started with tls=True)
            return tls_uri
        server: BrokerServer = self._request.getfixturevalue(f"{self.kind.broker}_tls_server")
        return server.uri


def numbered(count: int, prefix: str = "") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]
