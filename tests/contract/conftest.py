"""The contract suite's fixtures: every test runs between two real daemons on each broker x codec x mode.

A test module narrows the set with module attributes: `REAL_BROKERS_ONLY = True` (it needs a broker to kill or
to read directly) and `MODES = ("broadcast",)`; one test with `@setups(lambda s: s.codec == "syncar")`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends import BACKENDS
from backends.base import Mode
from sidecar.daemon import Daemon
from tests.brokers import BrokerServer
from tests.utils import run_daemon

SCHEMES = {"local": "local", "redis": "redis", "rabbitmq": "amqp", "nats": "nats"}
CODECS = ("syncar", "feathers-sync")


@dataclass(frozen=True)
class Setup:
    broker: str
    codec: str
    mode: Mode

    def __str__(self) -> str:
        return f"{self.broker}-{self.codec}" + ("-durable" if self.mode is Mode.DURABLE else "")


def _durable(broker: str) -> bool:
    return Mode.DURABLE in BACKENDS[SCHEMES[broker]]


# Durable mode needs the syncar codec, and a backend that has it.
SETUPS = [Setup(broker, codec, Mode.BROADCAST) for broker in SCHEMES for codec in CODECS] + [
    Setup(broker, "syncar", Mode.DURABLE) for broker in SCHEMES if _durable(broker)
]


def setups(predicate: Callable[[Setup], bool]) -> pytest.MarkDecorator:
    """`@setups(lambda s: ...)`: the `setups` mark, the setups one test applies to. Through `with_args`: called with a
    lone callable, `pytest.mark.setups` takes it for the test it decorates (to mypy, not at run time for a lambda)."""
    return pytest.mark.setups.with_args(predicate)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "setup" not in metafunc.fixturenames:
        return
    real_only = getattr(metafunc.module, "REAL_BROKERS_ONLY", False)
    modes = getattr(metafunc.module, "MODES", tuple(Mode))
    # `@setups(predicate)` narrows one test further: the setups it does not apply to are not made.
    narrowed = metafunc.definition.get_closest_marker("setups")
    applies = narrowed.args[0] if narrowed else lambda _: True
    params = [
        pytest.param(s, id=str(s), marks=[] if s.broker == "local" else [getattr(pytest.mark, s.broker)])
        for s in SETUPS
        if s.mode in modes and not (real_only and s.broker == "local") and applies(s)
    ]
    metafunc.parametrize("setup", params)


@dataclass
class Pair:
    """Two instances on one broker: daemon `a` with socket `sock_a`, daemon `b` with `sock_b`."""

    a: Daemon
    b: Daemon
    sock_a: Path
    sock_b: Path
    key: str
    server: BrokerServer | None  # None for the local backend
    mode: Mode


@pytest.fixture
def broker(setup: Setup, request: pytest.FixtureRequest) -> BrokerServer | None:
    if setup.broker == "local":
        return None
    server: BrokerServer = request.getfixturevalue(f"{setup.broker}_server")
    return server


@pytest.fixture
async def pair(setup: Setup, broker: BrokerServer | None, sock_dir: Path) -> AsyncIterator[Pair]:
    # A fresh key per test (Dapr's runID): nothing another test left on the broker can arrive.
    key = f"contract-{uuid.uuid4().hex}"
    uri = broker.uri if broker is not None else f"local://{key}"
    settings: dict[str, Any] = {"backend": uri, "codec": setup.codec, "key": key, "mode": setup.mode}
    async with contextlib.AsyncExitStack() as stack:
        daemons = [
            await stack.enter_async_context(
                run_daemon(sock_dir / f"{name}.sock", instance_id=f"{name}-{key[9:17]}", **settings)
            )
            for name in ("a", "b")
        ]
        yield Pair(daemons[0], daemons[1], sock_dir / "a.sock", sock_dir / "b.sock", key, broker, setup.mode)
