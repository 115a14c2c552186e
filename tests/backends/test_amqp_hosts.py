"""A RabbitMQ URI with a host list, against the session's real broker behind TCP proxies (one per "node"): a start
skips the hosts that are down, a fleet spreads over the hosts, a lost connection moves to another host. The same on
a real 3-node cluster, with its nodes killed: tests/cluster/test_rabbitmq_cluster.py."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from backends.amqp import AmqpBackend
from backends.base import BackendConfig, BackendState, BackendUnavailable
from tests.backends.support import Inbox, Started
from tests.brokers import free_port
from tests.brokers.rabbitmq import RabbitServer
from tests.faults.proxy import TcpProxy
from tests.utils import wait_for

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def proxies(rabbitmq_server: RabbitServer) -> AsyncIterator[list[TcpProxy]]:
    """Three proxies to the session's broker: three hosts of a URI that lead to one broker."""
    made = [await TcpProxy.start(rabbitmq_server.port) for _ in range(3)]
    yield made
    for proxy in made:
        await proxy.close()


def uri(*ports: int) -> str:
    return "amqp://guest:guest@" + ",".join(f"127.0.0.1:{port}" for port in ports) + "/"


async def start(started: Started, uri: str, connect_timeout: float = 5.0) -> AmqpBackend:
    return await started(AmqpBackend(BackendConfig(uri, f"hosts-{uuid.uuid4().hex[:8]}", connect_timeout)))


async def test_a_start_with_hosts_down_picks_a_live_one(
    proxies: list[TcpProxy], started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    live = proxies[0]
    for dead in ((free_port(),), (free_port(), free_port())):
        for _ in range(8):  # each starts at a random host: a dead one comes first in most of them
            caplog.clear()
            backend = await start(started, uri(*dead, live.port))
            assert backend.node == f"127.0.0.1:{live.port}"
            warnings = [
                r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "backends.amqp"
            ]
            assert len(warnings) <= 1, warnings  # the hosts skipped, in one line
            assert all(w.endswith("; connected to the next host") for w in warnings), warnings


async def test_a_start_with_every_host_down_is_unavailable_naming_each_host(started: Started) -> None:
    dead = (free_port(), free_port())
    backend = AmqpBackend(BackendConfig(uri(*dead), "all-down", 5.0))
    with pytest.raises(BackendUnavailable) as raised:
        await backend.start()
    await backend.close()
    message = str(raised.value)
    assert message.startswith("amqp: cannot connect to any host: 127.0.0.1:"), message
    for port in dead:
        assert f"127.0.0.1:{port} vhost '/': connection refused" in message, message
    assert "guest" not in message and "\n" not in message


async def test_a_fleet_spreads_over_the_hosts(proxies: list[TcpProxy], started: Started) -> None:
    nodes = {(await start(started, uri(*(p.port for p in proxies)))).node for _ in range(12)}
    assert len(nodes) >= 2, nodes  # all 12 on one host: 1 chance in 59,049 with a random start
    assert nodes <= {f"127.0.0.1:{p.port}" for p in proxies}


async def test_a_lost_connection_moves_to_another_host_and_subscribes_again(
    proxies: list[TcpProxy], started: Started, topic: str
) -> None:
    backend = await start(started, uri(*(p.port for p in proxies)))
    sender = await start(started, uri(*(p.port for p in proxies)))
    inbox = Inbox()
    await backend.subscribe(topic, inbox)
    lost = next(p for p in proxies if backend.node == f"127.0.0.1:{p.port}")
    lost.cut()
    await wait_for(
        lambda: backend.state is BackendState.CONNECTED and backend.node != f"127.0.0.1:{lost.port}",
        30,
        "a reconnect to another host",
    )
    assert lost.refused == 0  # the first attempt after the loss went to another host, not back to the lost one
    await wait_for(lambda: sender.state is BackendState.CONNECTED, 30, "the sender back")
    await sender.publish(topic, [b"after the move"])
    assert await inbox.wait(1, timeout=30) == [b"after the move"]
