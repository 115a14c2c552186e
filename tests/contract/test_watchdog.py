"""The subscription watchdog: a subscription the broker drops without a word is made again, on every broker.

Each break leaves the connection up and the backend unaware, which is what the watchdog is for (a break the
backend notices, a closed connection, is its own reconnect's job, tested in test_reconnect.py):

- local: the bus forgets the daemon's handlers;
- Redis: an UNSUBSCRIBE reaches the server on the daemon's subscriber connection through a proxy, as if the daemon
  had sent it (`CLIENT KILL TYPE pubsub` would close the connection, which the backend notices);
- RabbitMQ: the exchanges are deleted, taking the daemons' queue bindings with them; the queues and consumers stay,
  and publishers declare the exchanges again (deleting a daemon's queue cancels its consumer, which the backend
  notices and follows);
- NATS: an UNSUB of each of the daemon's subscriptions reaches the server through a proxy. The server does not send
  us back our own announcements there (no_echo), so it is a peer's silence that is heard.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends import local
from sidecar.daemon import Daemon
from sidecar.fleet import peers_topic
from tests.brokers import BrokerServer
from tests.faults.proxy import TcpProxy
from tests.utils import RawClient, metric, publish_frame, run_daemon, wait_for

INTERVAL = 0.2
BROKERS = [
    pytest.param("local"),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    pytest.param("nats", marks=pytest.mark.nats),
]
RESUBSCRIBES = "syncar_bus_resubscribes_total"


@contextlib.asynccontextmanager
async def two_daemons(
    name: str, request: pytest.FixtureRequest, sock_dir: Path, interval: float = INTERVAL
) -> AsyncIterator[tuple[Daemon, Daemon, BrokerServer | None, TcpProxy | None]]:
    """Daemons `a` (behind a proxy, on Redis and NATS) and `b` on a fresh key, announcing every `interval`."""
    key = f"watchdog-{uuid.uuid4().hex}"
    server: BrokerServer | None = None if name == "local" else request.getfixturevalue(f"{name}_server")
    proxy = None
    uri_a = uri_b = f"local://{key}" if server is None else server.uri
    if server is not None and name in ("redis", "nats"):
        proxy = await TcpProxy.start(server.port)
        uri_a = server.uri.replace(f":{server.port}", f":{proxy.port}")
    settings = {"key": key, "announce_interval": interval}
    try:
        async with (
            run_daemon(sock_dir / "a.sock", backend=uri_a, instance_id=f"a-{key[9:17]}", **settings) as a,
            run_daemon(sock_dir / "b.sock", backend=uri_b, instance_id=f"b-{key[9:17]}", **settings) as b,
        ):
            yield a, b, server, proxy
    finally:
        if proxy is not None:
            await proxy.close()


async def break_subscriptions(name: str, a: Daemon, server: BrokerServer | None, proxy: TcpProxy | None) -> None:
    """Make the broker forget `a`'s subscriptions, leaving its connection up and its backend unaware."""
    key = a.settings.key
    if name == "local":
        bus = local.BUSES[a.settings.backend]
        bus[key].remove(a.relay.on_message)
        bus[peers_topic(key)].remove(a.fleet.on_message)
    elif name == "redis":
        assert proxy is not None
        [link] = proxy.links_saying(b"SUBSCRIBE")
        link.inject(b"UNSUBSCRIBE\r\n")
    elif name == "nats":
        assert proxy is not None
        [link] = proxy.links_saying(b"SUB ")
        sids = re.findall(rb"\r\nSUB [^\r\n]* (\d+)\r\n", b"\r\n" + bytes(link.said))
        assert len(sids) == 2, link.said
        link.inject(b"".join(b"UNSUB %s\r\n" % sid for sid in sids))
    else:
        import aio_pika

        assert server is not None
        connection = await aio_pika.connect(server.uri)
        async with connection:
            channel = await connection.channel()
            for exchange in (key, peers_topic(key)):
                await channel.exchange_delete(exchange)


@pytest.mark.parametrize("name", BROKERS)
async def test_a_subscription_the_broker_dropped_silently_is_made_again(
    name: str, request: pytest.FixtureRequest, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.fleet")
    async with two_daemons(name, request, sock_dir) as (a, b, server, proxy):
        await wait_for(lambda: len(a.fleet.table) == 1 and len(b.fleet.table) == 1, what="each to hear the other")
        receiver = await RawClient.connect(a.settings.socket, {})
        sender = await RawClient.connect(b.settings.socket, {})
        await break_subscriptions(name, a, server, proxy)
        await wait_for(lambda: metric(a.metrics, RESUBSCRIBES) >= 1, timeout=20, what="a to subscribe again")
        # Subscribed again: what b publishes from now on reaches a's app.
        await sender.send(publish_frame(data="after"))
        [event] = await receiver.events(1, timeout=20)
        assert event["data"] == "after"
        lost = [r.getMessage() for r in caplog.records if r.name == "sidecar.fleet" and "heard nothing" in r.message]
        assert lost and f"heard nothing on '{peers_topic(a.settings.key)}'" in lost[0]
        assert any("subscribed again" in r.getMessage() for r in caplog.records)
        await receiver.close()
        await sender.close()


@pytest.mark.parametrize("name", BROKERS)
async def test_a_quiet_bus_is_no_false_alarm(name: str, request: pytest.FixtureRequest, sock_dir: Path) -> None:
    # Half a second: a false alarm would need a second and a half without hearing one, which a starved test
    # process on a loaded machine can come near at 0.2 s.
    interval = 0.5
    async with two_daemons(name, request, sock_dir, interval) as (a, b, _, _):
        await wait_for(lambda: len(a.fleet.table) == 1, what="a to hear b")
        # Ten intervals without an event: announcements keep both subscriptions proven.
        since = a.fleet.table.rows(0.0)[0][0].heard_at
        await wait_for(
            lambda: a.fleet.table.rows(0.0)[0][0].heard_at > since + 10 * interval, timeout=30, what="10 intervals"
        )
        assert metric(a.metrics, RESUBSCRIBES) == 0 and metric(b.metrics, RESUBSCRIBES) == 0
