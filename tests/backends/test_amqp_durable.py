"""The RabbitMQ backend's durable mode against a real rabbitmq-server: persistence, redelivery, retention, GC, faults.

The broker is the session's (its data dir survives restart(), as a real broker's disk does); what the tests
check on the broker side they read with rabbitmqctl, not through the backend under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from backends import amqp_subscription, load_backend
from backends.amqp import AmqpBackend, AmqpDurableBackend
from backends.amqp_topology import MAX_NAME_BYTES, durable_queue_name
from backends.base import BackendConfig, BackendConfigError, BackendError, BackendState, Feature, Message, Mode
from sidecar.outbox import RETRY_DELAY
from tests.backends.support import Inbox, Started
from tests.brokers.rabbitmq import RabbitServer
from tests.faults.proxy import TcpProxy
from tests.utils import RawClient, eventually, publish_frame, run_daemon, wait_for

pytestmark = pytest.mark.rabbitmq

Factory = Callable[..., Awaitable[AmqpBackend]]
RECOVERY_BOUND = 2.0  # the fault suite's promise: connected again within 2 s of the broker being back
QUEUE_TYPES = [pytest.param("quorum", id="quorum"), pytest.param("classic", id="classic")]
QUORUM_SETTLE = 3.0  # seconds a new quorum queue needs before RabbitMQ 3.10 survives a SIGKILL with it


@pytest.fixture
def server(rabbitmq_server: RabbitServer) -> RabbitServer:
    """The session's broker (tests/conftest.py): one boot of RabbitMQ for every module."""
    return rabbitmq_server


@pytest.fixture
def backend(server: RabbitServer, started: Started) -> Factory:
    """`await backend("instance-id", retention=..., ...)`: a started durable AmqpBackend, closed after the test;
    `port=` reaches the broker through a proxy listening there; `heartbeat=` is the URI option."""

    async def factory(
        instance_id: str | None = None,
        *,
        queue_type: str | None = None,
        retention: int = 100_000,
        instance_ttl: float = 3600.0,
        mode: Mode = Mode.DURABLE,
        on_state: Callable[[BackendState], None] | None = None,
        port: int | None = None,
        heartbeat: int | None = None,
    ) -> AmqpBackend:
        uri = server.uri if port is None else server.uri.replace(f":{server.port}/", f":{port}/")
        options = {"queue_type": queue_type, "heartbeat": heartbeat}
        query = "&".join(f"{name}={value}" for name, value in options.items() if value is not None)
        uri = f"{uri}?{query}" if query else uri
        config = BackendConfig(
            uri, instance_id or f"i-{uuid.uuid4().hex[:8]}", mode=mode, retention=retention, instance_ttl=instance_ttl
        )
        cls = load_backend(uri, mode)
        assert issubclass(cls, AmqpBackend), cls
        return await started(cls(config, on_state=on_state))

    return factory


def numbered(start: int, stop: int) -> list[bytes]:
    return [b"%d" % i for i in range(start, stop)]


async def queue_exists(server: RabbitServer, name: str) -> bool:
    """Passive declare on a connection of the test's own: the broker's answer, not the backend's."""
    connection = await aio_pika.connect(server.uri)
    try:
        channel = await connection.channel()
        await channel.declare_queue(name, passive=True)
        return True
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await connection.close()


def queue_names(server: RabbitServer) -> set[str]:
    return {row["name"] for row in server.list("queues", "name")}


def queue_row(server: RabbitServer, name: str) -> dict[str, Any]:
    rows = [
        row for row in server.list("queues", "name", "durable", "type", "arguments", "messages") if row["name"] == name
    ]
    assert len(rows) == 1, f"queue {name!r} not on the broker"
    row = rows[0]
    row["arguments"] = {key: value for key, _type, value in row["arguments"]}
    return row


async def test_features_depend_on_the_mode(backend: Factory) -> None:
    assert load_backend("amqp://host/", Mode.DURABLE) is AmqpDurableBackend
    assert load_backend("amqp://host/", Mode.BROADCAST) is AmqpBackend
    durable, broadcast = await backend(), await backend(mode=Mode.BROADCAST)
    assert durable.supports(Feature.DURABLE) and not broadcast.supports(Feature.DURABLE)


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
async def test_topology_and_settings_on_the_broker(
    server: RabbitServer, backend: Factory, topic: str, queue_type: str
) -> None:
    receiver = await backend("receiver", queue_type=queue_type, retention=5000, instance_ttl=7200.0)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    sender = await backend(queue_type=queue_type)
    await sender.publish(topic, [b"one", b"two"])
    assert await inbox.wait(2) == [b"one", b"two"]

    queue = f"{topic}.durable.receiver"

    async def acknowledged() -> bool:  # the handler returned before its ack reached the broker and its count
        return bool((await asyncio.to_thread(queue_row, server, queue))["messages"] == 0)

    await eventually(acknowledged, 10, "the broker to count both messages acknowledged")
    assert queue_row(server, queue) == {
        "name": queue,
        "durable": True,
        "type": queue_type,
        "messages": 0,
        "arguments": {
            "x-queue-type": queue_type,
            "x-max-length": 5000,
            "x-overflow": "drop-head",
            "x-expires": 7_200_000,
            "x-single-active-consumer": True,
        },
    }
    exchanges = {row["name"]: row for row in server.list("exchanges", "name", "type", "durable", "auto_delete")}
    assert exchanges[f"{topic}.durable"] == {
        "name": f"{topic}.durable",
        "type": "fanout",
        "durable": True,
        "auto_delete": False,
    }
    assert topic not in exchanges  # feathers-sync's non-durable exchange is left alone
    bindings = server.list("bindings", "source_name", "destination_name", "routing_key")
    assert {"source_name": f"{topic}.durable", "destination_name": queue, "routing_key": "queue-binding"} in bindings


async def test_messages_are_persistent(server: RabbitServer, backend: Factory, topic: str) -> None:
    away = await backend("away")
    await away.subscribe(topic, Inbox())
    await away.close()  # its queue stays and collects
    await (await backend()).publish(topic, [b"kept"])
    connection = await aio_pika.connect(server.uri)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{topic}.durable.away", passive=True)
        message = await queue.get(timeout=5)
        assert message.body == b"kept" and message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await message.reject(requeue=True)
    finally:
        await connection.close()
    assert queue_row(server, f"{topic}.durable.away")["type"] == "classic"  # the default


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
async def test_a_failing_handler_gets_its_message_again_in_order(
    backend: Factory, topic: str, queue_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("backends.amqp_subscription.REDELIVERY_DELAY", 0.05)
    sender, receiver = await backend(queue_type=queue_type), await backend(queue_type=queue_type)
    calls: list[bytes] = []
    failures = {b"3": 2, b"7": 1}

    async def handler(message: Message) -> None:
        calls.append(message.body)
        if failures.get(message.body, 0) > 0:
            failures[message.body] -= 1
            raise ValueError("handler bug")

    other = Inbox()
    await receiver.subscribe(topic, handler)
    await receiver.subscribe(f"{topic}-other", other)
    await sender.publish(topic, numbered(0, 10))
    await sender.publish(f"{topic}-other", numbered(0, 10))
    await wait_for(lambda: calls[-1:] == [b"9"] and not any(failures.values()), 10, "all ten handled")
    # What was handled before a failure is not handed over again; the failed one and all after it are, in order.
    assert calls == [*numbered(0, 4), b"3", b"3", *numbered(4, 8), b"7", b"8", b"9"]
    assert await other.wait(10) == numbered(0, 10)  # the other subscription has a channel of its own
    assert receiver.state is BackendState.CONNECTED


async def test_a_handler_returning_while_its_channel_is_let_go_still_gets_what_comes_next(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler held past HOLD_LIMIT gets its channel closed, and consuming starts again once it returns. If it
    returned while the acknowledgements before the close were being written, the channel was closed after it and
    nothing consumed again, for good."""
    monkeypatch.setattr(amqp_subscription, "HOLD_LIMIT", 0.5)
    caplog.set_level(logging.INFO, "backends")
    sender, receiver = await backend(), await backend()
    release = asyncio.Event()
    bodies: list[bytes] = []

    async def handler(message: Message) -> None:
        if message.body == b"held":
            await release.wait()  # as the relay waits while no app is connected
        bodies.append(message.body)

    acknowledge = amqp_subscription.AmqpDurableSubscription._ack_handled  # noqa: SLF001 - the hold limit awaits it
    close = amqp_subscription._close  # noqa: SLF001 - watched: the hold limit lets the channel go through it
    acknowledged, closed = asyncio.Event(), asyncio.Event()

    async def released_meanwhile(self: amqp_subscription.AmqpDurableSubscription, *, wait: bool = False) -> None:
        if wait and self._holding:  # the hold limit's call: the handler returns while it writes
            release.set()
            await wait_for(lambda: b"held" in bodies, 5, "the held handler to return")
            await acknowledge(self, wait=wait)
            acknowledged.set()  # the hold limit decides in the same step of the loop, before the test goes on
            return
        await acknowledge(self, wait=wait)

    async def watched(*args: Any) -> None:
        closed.set()
        await close(*args)

    monkeypatch.setattr(amqp_subscription.AmqpDurableSubscription, "_ack_handled", released_meanwhile)
    monkeypatch.setattr(amqp_subscription, "_close", watched)
    await receiver.subscribe(topic, handler)
    await sender.publish(topic, [b"held"])
    await asyncio.wait_for(acknowledged.wait(), 10)
    assert not closed.is_set(), "the channel was let go after its handler had returned"
    await sender.publish(topic, [b"next"])
    await wait_for(lambda: b"next" in bodies, 10, "the message after the held one")
    assert bodies == [b"held", b"next"]
    assert any("has held a delivery" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
async def test_a_consumer_back_while_the_broker_holds_the_old_one_gets_what_it_held_first(
    server: RabbitServer, backend: Factory, topic: str, queue_type: str
) -> None:
    """The daemon consumes again on a new connection while the broker still counts its old consumer, which holds
    what was delivered to it unacknowledged: here the link reset on the daemon's side only (a partition); in the
    fault suite's case 14 the node that led the quorum queue killed, its new leader giving the old consumer up a few
    milliseconds after the new one came. The new consumer got what was published since at once, the old one's
    messages after them once the broker let it go: case 14 reordered 10 events (and reported them lost in a `gap`).
    With one active consumer per queue the new one waits for them."""
    proxy = await TcpProxy.start(server.port)
    try:
        # The broker gives the old connection up after missing its heartbeats: seconds, not the default's 30.
        receiver = await backend(queue_type=queue_type, port=proxy.port, heartbeat=2)
        held, release = asyncio.Event(), asyncio.Event()
        bodies: list[bytes] = []

        async def handler(message: Message) -> None:
            if message.body == b"0" and not held.is_set():
                held.set()
                await release.wait()  # so that 0-9 are delivered and unacknowledged when the link goes
            bodies.append(message.body)

        await receiver.subscribe(topic, handler)
        sender = await backend(queue_type=queue_type)
        await sender.publish(topic, numbered(0, 10))
        await asyncio.wait_for(held.wait(), 10)
        proxy.reset_clients()
        await wait_for(lambda: receiver.state is BackendState.RECONNECTING, 10, "the receiver to notice")
        await wait_for(lambda: receiver.state is BackendState.CONNECTED, 10, "the receiver to consume again")
        release.set()
        await sender.publish(topic, numbered(10, 20))
        await wait_for(lambda: set(bodies) >= set(numbered(0, 20)), 30, "every message, the held ones again")
        assert list(dict.fromkeys(bodies)) == numbered(0, 20), bodies  # before: 0, 10-19, then 1-9
    finally:
        await proxy.close()


async def test_retention_keeps_the_newest(backend: Factory, topic: str) -> None:
    away = await backend("away", retention=10)
    await away.subscribe(topic, Inbox())
    await away.close()
    sender = await backend()
    await sender.publish(topic, numbered(0, 25))
    inbox = Inbox()
    await (await backend("away", retention=10)).subscribe(topic, inbox)
    assert await inbox.wait(10) == numbered(15, 25)
    await sender.publish(topic, [b"live"])
    assert await inbox.wait(11) == [*numbered(15, 25), b"live"]


async def test_an_instance_that_never_comes_back_is_forgotten(
    server: RabbitServer, backend: Factory, topic: str
) -> None:
    gone, staying = await backend("gone", instance_ttl=1.0), await backend("staying", instance_ttl=1.0)
    await gone.subscribe(topic, Inbox())
    inbox = Inbox()
    await staying.subscribe(topic, inbox)
    await gone.close()
    # Asked with rabbitmqctl: a passive declare would count as a use and renew the queue's lease.
    deadline = time.monotonic() + 20
    while f"{topic}.durable.gone" in await asyncio.to_thread(queue_names, server):
        assert time.monotonic() < deadline, "the queue of a departed instance did not expire"
    # A queue with a consumer never expires, however long it has existed.
    assert await queue_exists(server, f"{topic}.durable.staying")
    await (await backend()).publish(topic, [b"still here"])
    assert await inbox.wait(1) == [b"still here"]


async def test_changed_settings_keep_the_queue_as_it_is(
    server: RabbitServer, backend: Factory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = await backend("changing", retention=1000)
    await first.subscribe(topic, Inbox())
    await first.close()
    await (await backend()).publish(topic, [b"waiting"])
    inbox = Inbox()
    with caplog.at_level(logging.WARNING, logger="backends.amqp_topology"):
        second = await backend("changing", retention=2000)
        await second.subscribe(topic, inbox)
    assert await inbox.wait(1) == [b"waiting"]  # nothing lost to the change
    assert "exists with other settings, kept as they are" in caplog.text and "x-max-length" in caplog.text
    assert queue_row(server, f"{topic}.durable.changing")["arguments"]["x-max-length"] == 1000


async def test_long_instance_ids_get_distinct_stable_names(server: RabbitServer, backend: Factory, topic: str) -> None:
    first, second = "é" * 199 + "1", "é" * 199 + "2"  # 1194 characters escaped, the same but for the last
    names = {durable_queue_name(topic, first), durable_queue_name(topic, second)}
    assert len(names) == 2 and all(len(name.encode()) <= MAX_NAME_BYTES for name in names)
    assert durable_queue_name(topic, first) in names  # stable
    assert durable_queue_name(topic, "web-0.ns_1:x@y") == f"{topic}.durable.web-0.ns_1:x@y"
    # One-to-one: what the AMQP client refuses, and the escape character itself, are escaped.
    assert durable_queue_name(topic, "pod é+#") == f"{topic}.durable.pod+20+C3+A9+2B+23"
    assert durable_queue_name(topic, "a+2B") != durable_queue_name(topic, "a+")
    receivers = [await backend(instance) for instance in (first, second)]
    inboxes = [Inbox(), Inbox()]
    for receiver, inbox in zip(receivers, inboxes, strict=True):
        await receiver.subscribe(topic, inbox)
    await (await backend()).publish(topic, [b"to both"])
    for inbox in inboxes:
        assert await inbox.wait(1) == [b"to both"]
    assert all([await queue_exists(server, name) for name in names])


async def test_broadcast_and_durable_share_a_key_without_crossing(backend: Factory, topic: str) -> None:
    durable, broadcast = await backend(), await backend(mode=Mode.BROADCAST)
    durable_inbox, broadcast_inbox = Inbox(), Inbox()
    await durable.subscribe(topic, durable_inbox)
    await broadcast.subscribe(topic, broadcast_inbox)
    await durable.publish(topic, [b"durable"])
    await broadcast.publish(topic, [b"broadcast"])
    assert await durable_inbox.wait(1) == [b"durable"]
    assert await broadcast_inbox.wait(1) == [b"broadcast"]
    await durable.publish(topic, [b"durable 2"])
    await durable_inbox.wait(2)
    assert broadcast_inbox.bodies == [b"broadcast"]


async def test_a_key_that_cannot_name_an_exchange_is_a_config_error(backend: Factory) -> None:
    instance = await backend()
    with pytest.raises(BackendConfigError, match=r"^amqp: 'caf\u00e9\.durable' cannot name an exchange"):
        await instance.subscribe("caf\u00e9", Inbox())
    with pytest.raises(BackendConfigError, match=r"cannot name an exchange"):
        await instance.publish("x" * 250, [b"too long with .durable"])


async def test_an_unknown_queue_type_is_a_config_error(server: RabbitServer) -> None:
    instance = AmqpDurableBackend(BackendConfig(f"{server.uri}?queue_type=stream", "t", mode=Mode.DURABLE))
    with pytest.raises(BackendConfigError, match=r"^amqp: URI option queue_type must be quorum or classic, not "):
        await instance.start()
    await instance.close()


async def test_a_deleted_queue_is_declared_again(server: RabbitServer, backend: Factory, topic: str) -> None:
    receiver = await backend("deleted")
    inbox = Inbox()
    subscription = await receiver.subscribe(topic, inbox)
    assert isinstance(subscription, amqp_subscription.AmqpSubscription)
    sender = await backend()
    await sender.publish(topic, [b"before"])
    await inbox.wait(1)
    old_tag = subscription.consumer_tag
    await asyncio.to_thread(server.ctl, "delete_queue", f"{topic}.durable.deleted")
    # The broker cancels the consumer; the backend declares the queue again and consumes it.
    await wait_for(lambda: subscription.consumer_tag != old_tag and not subscription.cancelled, 10, "a new consumer")
    await sender.publish(topic, [b"after"])
    assert await inbox.wait(2) == [b"before", b"after"]
    assert receiver.state is BackendState.CONNECTED


async def test_a_queue_gone_while_its_instance_was_away_is_said_lost(
    server: RabbitServer, backend: Factory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What a broker that comes back without its data looks like to a daemon: its queue is not there any more when
    it consumes again. What was published meanwhile was confirmed to the publisher and is lost for this instance:
    the backend cannot get it back, but it says so, where it used to declare the queue again without a word."""
    proxy = await TcpProxy.start(server.port)
    try:
        receiver = await backend("away", port=proxy.port)
        inbox = Inbox()
        await receiver.subscribe(topic, inbox)
        sender = await backend()
        await sender.publish(topic, [b"before"])
        await inbox.wait(1)
        proxy.cut()
        await wait_for(lambda: receiver.state is BackendState.RECONNECTING, 10, "the receiver to notice")
        await asyncio.to_thread(server.ctl, "delete_queue", f"{topic}.durable.away")
        await sender.publish(topic, [b"while gone"])  # confirmed: routed to no queue
        with caplog.at_level(logging.WARNING, logger="backends.amqp_topology"):
            proxy.restore()
            await wait_for(lambda: receiver.state is BackendState.CONNECTED, 10, "the receiver to reconnect")
        await sender.publish(topic, [b"after"])
        assert await inbox.wait(2) == [b"before", b"after"]
        gone = [r.getMessage() for r in caplog.records if r.name == "backends.amqp_topology"]
        assert len(gone) == 1 and f"'{topic}.durable.away'" in gone[0] and "is lost" in gone[0], gone
    finally:
        await proxy.close()


async def test_a_publisher_back_from_an_outage_binds_the_queues_of_the_instances_it_knows(
    server: RabbitServer, backend: Factory, topic: str
) -> None:
    """A crashed RabbitMQ 3.10 can bring an instance's queue back without its binding (docs/reliability.md): what
    the others publish before that instance reconnects would be confirmed and reach none of its queues. A publisher
    coming back from an outage binds again the queues of the instances the fleet told it of, before it publishes.
    Here the binding is taken away by hand while the publisher's link is cut; the receiver never leaves."""
    receiver = await backend("stays")
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    proxy = await TcpProxy.start(server.port)
    try:
        sender = await backend(port=proxy.port)
        known = ["gone-for-good", "stays"]  # one without a queue: skipped, not made
        sender.peer_instances = lambda: known
        await sender.publish(topic, [b"before"])
        await inbox.wait(1)
        proxy.cut()
        await wait_for(lambda: sender.state is BackendState.RECONNECTING, 10, "the sender to notice")
        known = []  # the fleet forgets the peers it does not hear, and during an outage it hears none
        connection = await aio_pika.connect(server.uri)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(durable_queue_name(topic, "stays"))
            await queue.unbind(f"{topic}.durable", routing_key="queue-binding")
        proxy.restore()
        await wait_for(lambda: sender.state is BackendState.CONNECTED, 10, "the sender to reconnect")
        await sender.publish(topic, [b"after"])
        assert await inbox.wait(2) == [b"before", b"after"]
        assert "gone-for-good" not in await asyncio.to_thread(server.ctl, "list_queues", "name")
    finally:
        await proxy.close()


async def test_a_daemons_backend_knows_the_instances_its_fleet_heard(
    server: RabbitServer, sock_dir: Path, topic: str
) -> None:
    """The daemon hands its backend the fleet's peer table, which the test above stands in for by hand."""
    settings = {"backend": server.uri, "mode": "durable", "key": topic, "announce_interval": 0.2}
    async with (
        run_daemon(sock_dir / "a.sock", instance_id="a", **settings) as a,
        run_daemon(sock_dir / "b.sock", instance_id="b", **settings),
    ):
        await wait_for(lambda: list(a.backend.peer_instances()) == ["b"], 10, "a to hear b")


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
async def test_broker_killed_mid_stream_loses_nothing_confirmed(
    server: RabbitServer, backend: Factory, topic: str, queue_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    sender = await backend(queue_type=queue_type)
    receiver = await backend(queue_type=queue_type)
    received = Inbox()
    await receiver.subscribe(topic, received)
    declared = time.monotonic()
    total, kill_at = 1500, 400
    confirmed: list[bytes] = []

    async def stream() -> None:
        for body in numbered(0, total):
            for _ in range(100):  # bounded: a publish that was not confirmed is sent again, as the outbox does
                try:
                    await sender.publish(topic, [body])
                    break
                except BackendError:
                    # The outbox's pace: the publish can fail (its confirmation failed by the channel's end) before
                    # the backend has heard that the connection is gone, while its state still says connected.
                    await asyncio.sleep(RETRY_DELAY)
                    await wait_for(lambda: sender.state is BackendState.CONNECTED, 30, "the sender to reconnect")
            else:
                raise AssertionError(f"{body!r} never confirmed")
            confirmed.append(body)

    streaming = asyncio.create_task(stream())
    try:
        # RabbitMQ 3.10 loses a quorum queue killed within a second or two of its declaration (no leader ever
        # again, see docs/backends/rabbitmq.md): that is the broker's window, not what this test is about.
        settle = QUORUM_SETTLE if queue_type == "quorum" else 0.0
        await wait_for(
            lambda: len(confirmed) >= kill_at and time.monotonic() - declared > settle,
            20,
            f"{kill_at} confirmed publishes",
        )
        await asyncio.to_thread(server.kill)
        await wait_for(lambda: receiver.state is BackendState.RECONNECTING, 5, "the receiver to notice")
        await asyncio.to_thread(server.start)
        back = time.monotonic()
        await wait_for(lambda: sender.state is receiver.state is BackendState.CONNECTED, 10, "both to reconnect")
        assert time.monotonic() - back < RECOVERY_BOUND
        async with asyncio.timeout(40):
            await streaming
    finally:
        streaming.cancel()
    await wait_for(
        lambda: set(confirmed) <= set(received.bodies),
        20,
        f"every confirmed message (missing {len(set(confirmed) - set(received.bodies))})",
    )
    # At least once (a message unconfirmed when the broker died may come twice), and never out of order.
    firsts = list(dict.fromkeys(received.bodies))
    assert firsts == numbered(0, total)
    assert "was gone" not in caplog.text  # the broker kept the queue: nothing to warn of


async def test_two_daemons_an_instance_away_gets_everything_once_in_order(
    server: RabbitServer, sock_dir: Path, topic: str
) -> None:
    settings = {"backend": server.uri, "mode": "durable", "key": topic}
    sock_a, sock_b = sock_dir / "a.sock", sock_dir / "b.sock"
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(run_daemon(sock_a, instance_id="a", **settings))
        async with run_daemon(sock_b, instance_id="b", **settings):  # b's first run declares its queue
            app_b = await RawClient.connect(sock_b, {})
            last = {"epoch": app_b.welcome["epoch"], "seq": app_b.welcome["seq"]}
            await app_b.close()
        # b is away.
        app_a = await RawClient.connect(sock_a, {})
        stack.push_async_callback(app_a.close)
        for i in range(500):
            await app_a.send(publish_frame(data={"n": i}, id=f"e{i}", ack=True))
        for _ in range(500):
            assert (await app_a.frame_of("ack"))["type"] == "ack"  # each confirmed by the broker

        await stack.enter_async_context(run_daemon(sock_b, instance_id="b", **settings))
        # b read its queue as soon as it was up; its app, connecting after that, resumes from where it was in
        # b's previous run, and gets what this run has received.
        app_b = await RawClient.connect(sock_b, {"resume": last})
        stack.push_async_callback(app_b.close)
        assert app_b.welcome["resumed"] is True and app_b.welcome["epoch"] != last["epoch"]
        events = await app_b.events(500)
        assert [event["data"]["n"] for event in events] == list(range(500))
        assert {event["origin"] for event in events} == {"a"}
        assert len({event["id"] for event in events}) == 500
        # Exactly once: the next event after the 500 is the next one published.
        await app_a.send(publish_frame(data={"n": "sentinel"}, id="sentinel"))
        assert (await app_b.frame_of("event"))["data"] == {"n": "sentinel"}
