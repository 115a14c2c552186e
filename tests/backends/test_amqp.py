"""The RabbitMQ backend against a real rabbitmq-server: delivery, order, subscriptions, lifecycle, faults, topology."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import pamqp.frame
import pytest
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic

from backends import amqp_internals
from backends.amqp import AmqpBackend
from backends.amqp_common import DEFAULT_PREFETCH, confirmed
from backends.amqp_internals import GROUP_BYTES, Batch, Confirms
from backends.amqp_subscription import ACK_DELAY, AmqpSubscription
from backends.amqp_topology import BINDING_KEY
from backends.base import (
    Backend,
    BackendConfig,
    BackendError,
    BackendRefused,
    BackendState,
    BackendUnavailable,
    Message,
    MessageTooLarge,
    PublishTimeout,
    PublishUnconfirmed,
)
from tests.backends.support import Inbox, Started, tasks_started
from tests.brokers.rabbitmq import RabbitServer
from tests.faults.proxy import TcpProxy
from tests.utils import eventually, wait_for

pytestmark = pytest.mark.rabbitmq

Factory = Callable[..., Awaitable[AmqpBackend]]


@pytest.fixture
def server(rabbitmq_server: RabbitServer) -> RabbitServer:
    """The session's broker (tests/conftest.py): one boot of RabbitMQ for every module."""
    return rabbitmq_server


@pytest.fixture
def backend(server: RabbitServer, started: Started) -> Factory:
    """`await backend(uri=..., on_state=...)`: a started AmqpBackend, closed when the test ends."""

    async def factory(
        uri: str | None = None, on_state: Callable[[BackendState], None] | None = None, connect_timeout: float = 5.0
    ) -> AmqpBackend:
        config = BackendConfig(uri or server.uri, f"test-{len(started)}", connect_timeout)
        return await started(AmqpBackend(config, on_state=on_state))

    return factory


@pytest.fixture
def acked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The delivery tags every channel acknowledges to the broker, in order (`basic_ack` still goes through)."""
    tags: list[int] = []
    basic_ack = aiormq.Channel.basic_ack

    async def recording(channel: aiormq.Channel, delivery_tag: int, *args: Any, **kwargs: Any) -> None:
        tags.append(delivery_tag)
        await basic_ack(channel, delivery_tag, *args, **kwargs)

    monkeypatch.setattr(aiormq.Channel, "basic_ack", recording)
    return tags


async def test_a_slow_handler_holds_messages_on_the_broker(backend: Factory, topic: str) -> None:
    """Memory stays bounded: past the prefetch window, messages wait in the broker's queue, not in syncar."""
    sender, receiver = await backend(), await backend()
    release = asyncio.Event()
    got: list[bytes] = []

    async def handler(message: Message) -> None:
        await release.wait()
        got.append(message.body)

    subscription = await receiver.subscribe(topic, handler)
    assert isinstance(subscription, AmqpSubscription) and subscription.queue is not None
    sent = [str(i).encode() for i in range(1000)]
    await sender.publish(topic, sent)
    # An exclusive queue answers only its own connection, so ask on the subscription's own channel.
    waiting = -1
    for _ in range(200):
        declared = await subscription.channel.declare_queue(subscription.queue, passive=True, robust=False)
        waiting = declared.declaration_result.message_count or 0
        if waiting == 1000 - DEFAULT_PREFETCH:
            break
        await asyncio.sleep(0.02)
    assert waiting == 1000 - DEFAULT_PREFETCH
    release.set()
    await wait_for(lambda: len(got) == 1000, 10, "all 1000 after the handler caught up")
    assert got == sent


async def test_at_a_low_rate_broadcast_acknowledgements_are_grouped_in_time(
    backend: Factory, topic: str, acked: list[int]
) -> None:
    """An ack written to the broker for every message was a third of a receiving daemon's CPU at 1,000 events/s: in
    broadcast mode a message the handler caught up with waits up to ACK_DELAY for company; none is left unacked."""
    sender, receiver = await backend(), await backend()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    began = time.monotonic()
    for n in range(1, 21):  # one at a time, each handled before the next is sent
        await sender.publish(topic, [b"%d" % n])
        await inbox.wait(n)
    within_delay = time.monotonic() - began < ACK_DELAY
    await wait_for(lambda: acked[-1:] == [20], ACK_DELAY + 5, "the last delivery acknowledged")
    # Before: 20 acks, one per message. A loaded machine may pause a round trip past ACK_DELAY now and then.
    assert len(acked) == 1 if within_delay else len(acked) < 10, acked


async def one_at_a_time(sender: Backend, topic: str, inbox: Inbox, count: int) -> None:
    """Publish 1 to `count`, each handled by the receiver before the next is sent (after 0, already received)."""
    for n in range(1, count + 1):
        await sender.publish(topic, [b"%d" % n])
        await inbox.wait(n + 1)


async def test_at_a_low_rate_a_broadcast_subscription_sets_no_timer_per_message(backend: Factory, topic: str) -> None:
    """Waiting up to ACK_DELAY for company took an asyncio.timeout, a timer made and cancelled, per message handled;
    one timer now covers the wait, moved on when it fires early."""
    sender, receiver = await backend(), await backend()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"0"])
    await inbox.wait(1)
    loop = asyncio.get_running_loop()
    timers: list[str] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        task = asyncio.current_task()
        if task is not None and task.get_name().startswith("syncar-amqp-"):  # the subscription's worker
            timers.append(getattr(callback, "__qualname__", repr(callback)))
        return call_at(when, callback, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "call_at", counting)
        await one_at_a_time(sender, topic, inbox, 20)
    assert len(timers) <= 2, timers  # before: 20


async def test_the_broker_keeps_our_own_messages_from_us_and_everyone_elses_reach_us(
    server: RabbitServer, started: Started, topic: str, acked: list[int]
) -> None:
    """RabbitMQ has no no-local: a publishing daemon got each of its messages back, a third of what each daemon of a
    fleet of three read, each a wake-up and three frames only to be skipped. Its queue is bound so that the broker
    keeps them from it now; what anyone else publishes still arrives: another syncar, feathers-sync (its queue's name
    as the routing key) and an older syncar (an empty one)."""
    mine = await started(AmqpBackend(BackendConfig(server.uri, "test-mine", echo=False)))
    other = await started(AmqpBackend(BackendConfig(server.uri, "test-other", echo=False)))
    assert not mine.broker_echoes
    inbox = Inbox()
    await mine.subscribe(topic, inbox)
    for start in range(0, 3 * DEFAULT_PREFETCH, 64):
        await mine.publish(topic, [b"mine %d" % n for n in range(start, start + 64)])
    await other.publish(topic, [b"theirs"])
    connection = await aio_pika.connect(server.uri)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topic)
        await exchange.publish(aio_pika.Message(b"feathers-sync"), routing_key="amq.gen-JzTY20BRgKO-HjmUJj0wLg")
        await exchange.publish(aio_pika.Message(b"older syncar"), routing_key="")
    finally:
        await connection.close()
    assert await inbox.wait(3) == [b"theirs", b"feathers-sync", b"older syncar"]
    await wait_for(lambda: acked[-1:] == [3], ACK_DELAY + 5, "every delivery acknowledged")  # before: 769, 770, 771


async def test_a_subscription_comes_back_at_once_while_the_broker_still_holds_its_old_connection(
    server: RabbitServer, started: Started, topic: str
) -> None:
    """The link reset on the daemon's side only (a partition, a middlebox): the broker keeps the old connection, and
    the exclusive queue that keeps our own messages from us with it, until its heartbeat gives up (~30 s here). The
    subscription made again on a new connection must not wait for that: it did, refused RESOURCE_LOCKED while
    deleting the old one, and lost what was published meanwhile."""
    proxy = await TcpProxy.start(server.port)
    try:
        via = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        mine = await started(AmqpBackend(BackendConfig(via, "test-mine", echo=False)))
        other = await started(AmqpBackend(BackendConfig(server.uri, "test-other", echo=False)))
        inbox = Inbox()
        await mine.subscribe(topic, inbox)
        await other.publish(topic, [b"before"])
        await inbox.wait(1)
        proxy.reset_clients()

        async def published_and_arrived() -> bool:  # published until one reaches the subscription made again
            if b"after" in inbox.bodies:
                return True
            await other.publish(topic, [b"after"])
            return False

        await eventually(published_and_arrived, 10.0, "a message to reach the subscription after the reset")
    finally:
        await proxy.close()


@pytest.mark.parametrize("documented", [True, False], ids=["documented", "before"])
async def test_a_user_with_the_documented_permissions_or_those_asked_for_before_gets_none_of_its_own(
    documented: bool,
    *,
    server: RabbitServer,
    started: Started,
    topic: str,
    acked: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/backends/rabbitmq.md's permissions let a daemon make what keeps its own messages from its queue. Those it
    asked for until now (the key's exchange, `amq.gen-` queues) do not: the daemon binds its queue directly, as
    before, says what to grant, and skips its own messages by their routing key as they arrive, acknowledged with
    the rest."""
    ours = "(syncar\\.)?" if documented else ""
    user, allowed = f"narrow-{topic}", f"^({topic}|{ours}amq\\.gen-.*)$"
    server.ctl("add_user", user, "pw")
    try:
        server.ctl("set_permissions", "-p", "/", user, allowed, allowed, allowed)
        uri = f"amqp://{user}:pw@127.0.0.1:{server.port}/"
        mine = await started(AmqpBackend(BackendConfig(uri, "test-mine", echo=False)))
        other = await started(AmqpBackend(BackendConfig(server.uri, "test-other", echo=False)))
        inbox = Inbox()
        with caplog.at_level("WARNING", logger="backends.amqp_topology"):
            await mine.subscribe(topic, inbox)
        warned = "grant configure, write and read on '^syncar\\.amq\\.gen-.*$' too" in caplog.text
        assert warned is not documented, caplog.text
        await mine.publish(topic, [b"mine %d" % n for n in range(3)])
        await other.publish(topic, [b"theirs"])
        assert await inbox.wait(1) == [b"theirs"]
        last = 1 if documented else 4  # the broker kept them from us, or they came and were skipped
        await wait_for(lambda: acked[-1:] == [last], ACK_DELAY + 5, "every delivery acknowledged")
        await mine.close()
    finally:
        server.ctl("delete_user", user)


def spared(server: RabbitServer) -> list[str]:
    """The exchanges and queues on the broker that keep some queue's own messages from it."""
    names = [row["name"] for what in ("exchanges", "queues") for row in server.list(what, "name")]
    return sorted(name for name in names if name.startswith("syncar.amq.gen-"))


async def test_what_keeps_our_own_messages_from_us_goes_with_the_subscription(
    server: RabbitServer, started: Started, topic: str
) -> None:
    """Two exchanges and a queue of length 0 per subscription: gone once it unsubscribes, or its connection closes."""
    before = spared(server)
    mine = await started(AmqpBackend(BackendConfig(server.uri, "test-mine", echo=False)))
    subscription = await mine.subscribe(topic, Inbox())
    assert isinstance(subscription, AmqpSubscription)
    made = [name for name in spared(server) if name not in before]
    assert sorted(made) == sorted(f"syncar.{subscription.queue}.{part}" for part in ("in", "others", "own")), made
    await subscription.unsubscribe()
    await wait_for(lambda: not set(made) & set(spared(server)), 10, "gone with the subscription")
    subscription = await mine.subscribe(topic, Inbox())
    assert isinstance(subscription, AmqpSubscription)
    assert any(name.startswith(f"syncar.{subscription.queue}.") for name in spared(server))
    await mine.close()
    await wait_for(lambda: spared(server) == before, 10, "gone with the connection")


async def test_a_subscription_consuming_again_on_the_same_connection_leaves_nothing_of_its_last_queue(
    server: RabbitServer, started: Started, topic: str
) -> None:
    """The broker closes the consuming channel (here over a passive declare of a queue that does not exist) and the
    connection stays: the last queue goes with its consumer, and the length-0 queue and the direct exchange that
    kept our own messages from it are deleted before the next ones are made; ours still do not come back."""
    before = spared(server)
    mine = await started(AmqpBackend(BackendConfig(server.uri, "test-mine", echo=False)))
    other = await started(AmqpBackend(BackendConfig(server.uri, "test-other", echo=False)))
    inbox = Inbox()
    subscription = await mine.subscribe(topic, inbox)
    assert isinstance(subscription, AmqpSubscription)
    first = subscription.queue
    underlay = await subscription.channel.get_underlay_channel()
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await underlay.queue_declare("no such queue", passive=True)
    await wait_for(lambda: subscription.queue != first and subscription.consumer_tag is not None, 10, "consuming again")
    made = sorted(f"syncar.{subscription.queue}.{part}" for part in ("in", "others", "own"))
    await wait_for(lambda: [n for n in spared(server) if n not in before] == made, 10, "only the new queue's")
    await mine.publish(topic, [b"mine"])
    await other.publish(topic, [b"theirs"])
    assert await inbox.wait(1) == [b"theirs"]


async def test_a_delivery_starts_no_task(backend: Factory, topic: str) -> None:
    """aiormq ran the consumer's callback in a Task per delivery, only for it to queue the message for the worker;
    the channel's reader now hands each message over as it reads it, in order."""
    sender, receiver = await backend(), await backend()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"0"])
    await inbox.wait(1)
    with tasks_started() as created:
        await one_at_a_time(sender, topic, inbox, 20)
        await sender.publish(topic, [b"batch %d" % n for n in range(30)])
        await inbox.wait(51)
    assert [name for name in created if "deliver" in name.lower()] == [], created  # before: 51 (one per delivery)
    assert inbox.bodies == [b"%d" % n for n in range(21)] + [b"batch %d" % n for n in range(30)]


async def test_a_publish_is_written_in_the_publishers_turn_not_by_aiormqs_writer_a_turn_later(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiormq's writer Task wrote each frame group put in its queue a turn of the loop later (13 µs of a
    one-message publish's 178 at 1,000 a second); with nothing queued before it, a publish writes its group itself."""
    sender, receiver = await backend(), await backend()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"first"])
    await inbox.wait(1)
    queued: list[bytes] = []
    put = asyncio.Queue.put

    async def counting(queue: asyncio.Queue[Any], item: Any) -> None:
        if isinstance(item, ChannelFrame) and b"written-" in item.payload:
            queued.append(item.payload)
        await put(queue, item)

    monkeypatch.setattr(asyncio.Queue, "put", counting)
    bodies = [b"written-%d" % n for n in range(20)]
    for body in bodies:
        await sender.publish(topic, [body])
    monkeypatch.undo()
    assert queued == []  # before: 20, one per publish
    assert (await inbox.wait(21))[1:] == bodies


async def test_a_batch_goes_out_in_one_write_without_a_task_per_message(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiormq's basic_publish took a Task per message and its writer a system call per message, a loop turn after
    the batch was handed over: a third of a millisecond between the app's frame and the broker at one event at a
    time. A small batch is now one frame group for the writer, confirmed message by message as before."""
    writes: list[int] = []
    write = asyncio.StreamWriter.write

    def counting(writer: asyncio.StreamWriter, data: Any) -> None:
        writes.append(len(data))
        write(writer, data)

    sender, receiver = await backend(), await backend()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"first"])  # the exchange declared, the channel warm
    await inbox.wait(1)
    loop = asyncio.get_running_loop()
    tasks: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        tasks.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kwargs)

    bodies = [b"%d" % n for n in range(100)]
    monkeypatch.setattr(asyncio.StreamWriter, "write", counting)
    loop.set_task_factory(factory)
    try:
        await sender.publish(topic, bodies)  # returns once the broker confirmed all 100
    finally:
        loop.set_task_factory(None)
        monkeypatch.undo()
    # One write of 100 messages (and perhaps the receiver's acknowledgement): before, 100 writes and 100 Tasks. (The
    # receiver, in this same loop, gets a Task per delivery from aiormq: not the sender's.)
    publishing = [task for task in tasks if "publish" in task]
    assert publishing == [] and len(writes) <= 2 and max(writes) > 100 * 30, (publishing, writes)
    assert (await inbox.wait(101))[1:] == bodies
    # A large batch goes out in groups of about GROUP_BYTES, so the broker routes its first messages meanwhile.
    large = [b"%03d" % n + b"x" * 20_000 for n in range(40)]
    writes.clear()
    monkeypatch.setattr(asyncio.StreamWriter, "write", counting)
    await sender.publish(topic, large)
    monkeypatch.undo()
    assert len(writes) >= len(large) * 20_000 // GROUP_BYTES and max(writes) < 2 * GROUP_BYTES, writes
    assert (await inbox.wait(141))[101:] == large


async def test_the_method_frame_and_properties_are_marshalled_once(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pamqp marshalled the Basic.Publish and the properties for every batch, 40 to 90 µs, as much as the rest of
    a one-message batch's publish: at 1,000 events/s in a fleet nearly every batch is of one message."""
    marshalled: list[str] = []
    marshal, properties = pamqp.frame.marshal, Basic.Properties.marshal

    def counting_frames(frame: Any, channel: int) -> bytes:
        marshalled.append(type(frame).__name__)
        return marshal(frame, channel)

    def counting_properties(self: Basic.Properties) -> bytes:
        marshalled.append("Properties")
        return properties(self)

    sender, receiver = await backend(), await backend()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    monkeypatch.setattr(pamqp.frame, "marshal", counting_frames)
    monkeypatch.setattr(Basic.Properties, "marshal", counting_properties)
    for n in range(20):
        await sender.publish(topic, [b"%d" % n])
    assert await inbox.wait(20) == [b"%d" % n for n in range(20)]
    assert marshalled.count("Publish") == 1 and marshalled.count("Properties") == 1, marshalled  # before: 20 each


async def test_message_size_limit(server: RabbitServer, backend: Factory, topic: str) -> None:
    assert (await backend()).max_message_bytes == 64 * 1024 * 1024
    # For a broker whose max_message_size is below syncar's default.
    instance = await backend(f"{server.uri}?max_message_bytes=1024")
    assert instance.max_message_bytes == 1024
    inbox = Inbox()
    await instance.subscribe(topic, inbox)
    with pytest.raises(MessageTooLarge, match=r"^amqp: message of 1025 bytes is over the limit of 1024 bytes$"):
        await instance.publish(topic, [b"fine", b"x" * 1025])
    await instance.publish(topic, [b"x" * 1024])
    # Nothing of the refused call went out: the first message seen is the one that fit.
    assert await inbox.wait(1) == [b"x" * 1024]


async def test_wrong_password_is_a_clean_error_without_the_password(server: RabbitServer) -> None:
    instance = AmqpBackend(BackendConfig(f"amqp://guest:not-the-pw-42@127.0.0.1:{server.port}/", "t", 5.0))
    with pytest.raises(BackendRefused) as raised:
        await instance.start()
    message = str(raised.value)
    assert message.startswith("amqp: cannot connect to ") and "ACCESS_REFUSED" in message
    assert "not-the-pw-42" not in message and "\n" not in message
    await instance.close()


async def test_an_unknown_vhost_is_named_in_the_error(server: RabbitServer) -> None:
    instance = AmqpBackend(BackendConfig(f"amqp://guest:guest@127.0.0.1:{server.port}/nowhere", "t", 5.0))
    with pytest.raises(
        BackendRefused,
        match=r"^amqp: cannot connect to 127\.0\.0\.1:\d+ vhost 'nowhere': the "
        r"broker refused to open the vhost \(no such vhost, or no permission",
    ):
        await instance.start()
    await instance.close()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("amqp://127.0.0.1:notaport/", r"^amqp: invalid URI: "),
        ("amqp:///vhost", r"^amqp: the URI names no host"),
        # aio-pika's docstring says ca_certs; aiormq would silently ignore it and verify against the system CAs.
        ("amqps://u:pw-secret@127.0.0.1/?ca_certs=/ca.pem", r"^amqp: unknown URI option 'ca_certs'; known: cafile, "),
        ("amqp://u:pw-secret@127.0.0.1/?cafile=/ca.pem", r"^amqp: URI option 'cafile' needs amqps://$"),
        (
            "amqps://u:pw-secret@127.0.0.1/?certfile=/nonexistent.pem",
            r"^amqp: URI option certfile must be an existing file, not '/nonexistent.pem'$",
        ),
        ("amqp://u:pw-secret@127.0.0.1/?heartbeat=soon", r"^amqp: URI option heartbeat must be whole seconds"),
        (
            "amqp://u:pw-secret@127.0.0.1/?reconnect_interval=0",
            r"^amqp: URI option reconnect_interval must be seconds ",
        ),
        ("amqp://u:pw-secret@127.0.0.1/?auth=kerberos", r"^amqp: URI option auth must be plain or external"),
        ("amqp://u:pw-secret@127.0.0.1/?max_message_bytes=1k", r"^amqp: URI option max_message_bytes must be bytes"),
    ],
)
async def test_an_unusable_uri_is_a_clean_error(uri: str, expected: str) -> None:
    instance = AmqpBackend(BackendConfig(uri, "t"))
    with pytest.raises(BackendError, match=expected) as raised:
        await instance.start()
    assert not isinstance(raised.value, BackendUnavailable)  # a config mistake, not worth retrying
    assert "pw-secret" not in str(raised.value)
    await instance.close()


async def test_tls_refuses_an_unknown_ca(server: RabbitServer) -> None:
    # No cafile: the system CAs, which never signed the test CA.
    untrusted = AmqpBackend(BackendConfig(f"amqps://guest:guest@127.0.0.1:{server.tls_port}/", "t", 5.0))
    with pytest.raises(
        BackendRefused,
        match=r"^amqp: cannot connect to 127\.0\.0\.1:\d+ vhost '/': .*"
        r"certificate verify failed",
    ):
        await untrusted.start()
    await untrusted.close()


async def test_tls_to_the_plain_listener_is_refused(server: RabbitServer) -> None:
    """amqps:// to the AMQP port: the broker answers in AMQP, which no retry changes (it was retried for ever)."""
    plain_port = AmqpBackend(BackendConfig(f"amqps://guest:guest@127.0.0.1:{server.port}/", "t", 5.0))
    with pytest.raises(
        BackendRefused,
        match=r"^amqp: cannot connect to 127\.0\.0\.1:\d+ vhost '/': tls: wrong version number: the server did not "
        r"answer in TLS",
    ):
        await plain_port.start()
    await plain_port.close()


async def test_tls_without_a_client_certificate_is_refused(server: RabbitServer) -> None:
    uri = server.tls_uri.split("&certfile=")[0]  # the CA only
    anonymous = AmqpBackend(BackendConfig(uri, "t", 5.0))
    with pytest.raises(BackendError, match=r"^amqp: cannot connect to "):  # an alert, or only a closed connection
        await anonymous.start()
    await anonymous.close()


async def test_the_exchange_matches_feathers_sync_and_bodies_cross_byte_for_byte(
    server: RabbitServer, backend: Factory, topic: str
) -> None:
    """A raw client doing exactly what feathers-sync 3.x's amqp adapter does shares the exchange with syncar."""
    instance = await backend()
    syncar_inbox = Inbox()
    await instance.subscribe(topic, syncar_inbox)  # syncar declared the exchange first
    connection = await aio_pika.connect(server.uri)
    try:
        channel = await connection.channel()
        # amqplib assertExchange(key, 'fanout', {durable: false}); assertQueue('', {autoDelete: true}) (durable
        # defaults to true in amqplib); bindQueue(queue, key, 'queue-binding'); consume(noAck).
        exchange = await channel.declare_exchange(
            topic, aio_pika.ExchangeType.FANOUT, durable=False, auto_delete=False, internal=False
        )
        queue = await channel.declare_queue("", durable=True, auto_delete=True)
        assert queue.name.startswith("amq.gen-")
        await queue.bind(exchange, BINDING_KEY)
        feathers_inbox: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            feathers_inbox.put_nowait(message.body)

        await queue.consume(on_message, no_ack=True)
        bodies = [b'{"event":"created","path":"messages","data":{"text":"h\xc3\xa9llo"},"context":{}}', b"\x00\x01"]
        await instance.publish(topic, bodies)
        async with asyncio.timeout(5):
            assert [await feathers_inbox.get() for _ in bodies] == bodies
        # And back: feathers-sync publishes with its own queue's name as the routing key.
        await exchange.publish(aio_pika.Message(b'{"event":"patched"}'), routing_key=queue.name)
        assert await syncar_inbox.wait(3) == [*bodies, b'{"event":"patched"}']
        async with asyncio.timeout(5):
            assert await feathers_inbox.get() == b'{"event":"patched"}'  # feathers-sync hears itself too
        # A second syncar joining after the feathers-sync side declared: still no PRECONDITION_FAILED.
        other = await backend()
        await other.subscribe(topic, Inbox())
        await other.publish(topic, [b"from the second syncar"])
        async with asyncio.timeout(5):
            assert await feathers_inbox.get() == b"from the second syncar"
    finally:
        await connection.close()


async def test_an_inequivalent_exchange_is_a_clean_error(server: RabbitServer, backend: Factory, topic: str) -> None:
    connection = await aio_pika.connect(server.uri)
    try:
        channel = await connection.channel()
        await channel.declare_exchange(topic, aio_pika.ExchangeType.FANOUT, durable=True)
    finally:
        await connection.close()
    instance = await backend()
    with pytest.raises(BackendError, match=r"^amqp: subscribe to .*PRECONDITION_FAILED"):
        await instance.subscribe(topic, Inbox())
    with pytest.raises(BackendError, match=r"^amqp: publish failed: .*PRECONDITION_FAILED"):
        await instance.publish(topic, [b"x"])
    # The channels recover from the broker closing them: another topic still works.
    inbox = Inbox()
    await wait_for(lambda: instance.state is BackendState.CONNECTED, 5, "the backend to stay connected")
    await instance.subscribe(f"{topic}-ok", inbox)
    await instance.publish(f"{topic}-ok", [b"fine"])
    assert await inbox.wait(1) == [b"fine"]


async def test_confirms_are_waited_for_while_they_keep_coming() -> None:
    # A batch confirmed slowly but steadily (1024 messages on a busy machine took over 10 s) is not a broker that
    # stopped confirming: timing it out made the outbox send it again, or drop it with the feathers-sync codec.
    loop = asyncio.get_running_loop()
    slow = Batch(1, 6, loop.create_future())
    kept = Confirms(types.SimpleNamespace(delivery_tag=0, frames=asyncio.Queue()))  # type: ignore[arg-type]
    kept.batches.append(slow)

    async def confirm_one_by_one() -> None:
        for tag in range(1, 7):
            await asyncio.sleep(0.5)  # the broker's pace: a fault injected, not a wait for a condition
            kept.settle(tag, multiple=False, refusal=None)

    confirming = asyncio.create_task(confirm_one_by_one())
    assert await confirmed(slow, timeout=2.0) is None  # 3 s in all, never 2 s without one
    await confirming
    stuck = Batch(7, 8, loop.create_future())
    kept.batches.append(stuck)
    kept.settle(7, multiple=False, refusal=None)
    with pytest.raises(TimeoutError):
        await confirmed(stuck, timeout=0.2)
    refused = Batch(9, 9, loop.create_future())
    kept.batches.append(refused)
    kept.settle(9, multiple=False, refusal=Basic.Nack(9))
    assert isinstance(await confirmed(refused, timeout=0.2), aiormq.exceptions.DeliveryError)


def failed_as_aiormq_fails_on_close() -> asyncio.Future[Any]:
    """What aiormq leaves a call waiting on a connection it closes (its heartbeat found it stuck): a future failed
    with CancelledError (`FutureStore.reject_all`), though nobody cancelled the task that awaits it."""
    failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    failed.set_exception(asyncio.CancelledError())
    return failed


async def test_a_confirmation_aiormq_cancels_is_a_lost_publish_not_a_cancelled_publisher(
    server: RabbitServer, backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Awaited as it is, the confirmation's CancelledError left publish() and ended the daemon's outbox task (found
    by review); the publisher's own cancellation still cancels it."""
    publish = amqp_internals.publish
    cancel_confirmation, published = True, asyncio.Event()

    async def publish_then_close(*args: Any) -> Batch:
        batch = await publish(*args)
        if cancel_confirmation:
            batch.confirmation = failed_as_aiormq_fails_on_close()
        else:
            published.set()
        return batch

    monkeypatch.setattr(amqp_internals, "publish", publish_then_close)
    proxy = await TcpProxy.start(server.port)
    try:
        sender = await backend(uri=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        with pytest.raises(PublishUnconfirmed, match="interrupted"):
            await sender.publish(topic, [b"lost"])
        cancel_confirmation = False
        proxy.reply_latency = 120.0  # the broker's confirm held back: the publisher waits for it
        waiting = asyncio.create_task(sender.publish(topic, [b"waiting"]))
        async with asyncio.timeout(10):
            await published.wait()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        await proxy.close()


async def test_a_declare_aiormq_cancels_is_a_failed_publish_not_a_cancelled_publisher(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic's first publish declares its exchange: aiormq failing that declare with CancelledError on a connection
    it closed left publish() as a CancelledError too, and ended the outbox task."""
    sender = await backend()
    monkeypatch.setattr(aiormq.Channel, "exchange_declare", lambda *_, **__: failed_as_aiormq_fails_on_close())
    with pytest.raises(PublishUnconfirmed, match="interrupted"):
        await sender.publish(topic, [b"first"])
    monkeypatch.undo()
    await sender.publish(topic, [b"again"])  # as the outbox sends it again


async def test_a_subscribe_aiormq_cancels_is_a_failed_subscribe_not_a_cancelled_caller(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """subscribe() (the daemon's start, the watchdog's resubscribe) let aiormq's CancelledError out: the fleet's task,
    which takes a failed resubscribe for a broker that refuses and tries again, ended as if cancelled (found by
    review)."""
    receiver = await backend()

    async def handler(_message: Message) -> None:
        pass

    monkeypatch.setattr(aiormq.Channel, "exchange_declare", lambda *_, **__: failed_as_aiormq_fails_on_close())
    monkeypatch.setattr(aiormq.Channel, "queue_declare", lambda *_, **__: failed_as_aiormq_fails_on_close())
    with pytest.raises(BackendUnavailable, match="interrupted"):
        await receiver.subscribe(topic, handler)
    monkeypatch.undo()
    await receiver.subscribe(topic, handler)  # as the watchdog tries again


async def test_a_publish_on_a_connection_found_stuck_fails_as_unconfirmed(
    server: RabbitServer, backend: Factory, topic: str
) -> None:
    proxy = await TcpProxy.start(server.port)
    try:
        sender = await backend(uri=f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat=1")
        await sender.publish(topic, [b"declared"])
        sender.publish_timeout = 60.0  # aiormq's heartbeat, (1 + 1) x 3 s of silence, ends the wait, not this
        proxy.reply_latency = 120.0  # the broker's confirms and heartbeats held back
        with pytest.raises(PublishUnconfirmed, match="interrupted"):
            async with asyncio.timeout(30):
                await sender.publish(topic, [b"stuck"])
    finally:
        await proxy.close()


async def test_a_delivery_is_handled_as_the_connections_reader_hands_it_over(backend: Factory, topic: str) -> None:
    """Each delivery went through a queue to the subscription's worker Task: a turn of the event loop per message
    (an epoll_pwait more, docs/benchmarks/history.md, "a turn of the event loop less per message"). The handler now runs
    as the reader hands the message over."""
    sender, receiver = await backend(), await backend()
    inbox = Inbox()
    runners: list[str] = []

    async def handler(message: Message) -> None:
        task = asyncio.current_task()
        runners.append(task.get_name() if task is not None else "")
        await inbox(message)

    await receiver.subscribe(topic, handler)
    for n in range(3):
        await sender.publish(topic, [b"%d" % n])
        await inbox.wait(n + 1)
    assert f"syncar-amqp-{topic}" not in runners, runners  # before: the worker's name, three times


async def test_a_handler_that_waits_is_finished_before_the_next_message_is_handed_over(
    backend: Factory, topic: str
) -> None:
    """A handler that waits is finished by the worker, and the messages that come meanwhile wait their turn behind
    it: one handler call at a time, in order."""
    sender, receiver = await backend(), await backend()
    release = asyncio.Event()
    running, most = 0, 0
    got: list[bytes] = []

    async def handler(message: Message) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if message.body == b"0":
            await release.wait()
        got.append(message.body)
        running -= 1

    await receiver.subscribe(topic, handler)
    await sender.publish(topic, [b"0"])
    await wait_for(lambda: running == 1, 5, "the first handler call waiting")
    sent = [b"%d" % n for n in range(1, 50)]
    for body in sent:  # one at a time, each alone on the wire as at a low rate
        await sender.publish(topic, [body])
    release.set()
    await wait_for(lambda: len(got) == 50, 10, "all 50 handled")
    assert got == [b"0", *sent]
    assert most == 1


async def test_a_handler_may_stop_its_own_subscription(backend: Factory, topic: str) -> None:
    """stop() from inside the handler returns at once, as it did when the worker ran every handler. Handed over by
    the reader, the handler waited in stop() for the worker to end, and the worker ended without finishing it."""
    sender, receiver = await backend(), await backend()
    stopped = asyncio.Event()
    subscriptions: list[AmqpSubscription] = []
    got: list[bytes] = []

    async def handler(message: Message) -> None:
        got.append(message.body)
        await subscriptions[0].stop(cancel_consumer=False)
        stopped.set()

    subscription = await receiver.subscribe(topic, handler)
    assert isinstance(subscription, AmqpSubscription)
    subscriptions.append(subscription)
    await sender.publish(topic, [b"only"])
    await asyncio.wait_for(stopped.wait(), 2)
    assert got == [b"only"]


async def test_a_publish_the_broker_never_confirms_times_out(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = await backend()
    await sender.publish(topic, [b"declared"])
    sender.publish_timeout = 0.3
    monkeypatch.setattr(Confirms, "settle", lambda *_: None)  # the broker's acknowledgements go unheard
    with pytest.raises(PublishTimeout, match=r"confirmed nothing for 0\.3s"):
        await sender.publish(topic, [b"lost"])


async def test_a_message_the_broker_refuses_fails_its_publish(
    backend: Factory, server: RabbitServer, topic: str
) -> None:
    """A queue that rejects what it has no room for makes RabbitMQ nack the publish: the publish raises."""
    sender = await backend()
    await sender.publish(topic, [b"declared"])
    async with await aio_pika.connect(server.uri) as connection:
        channel = await connection.channel()
        full = await channel.declare_queue(
            exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        await full.bind(sender.topology.exchange(topic))
        with pytest.raises(BackendError, match=r"refused the message \(nack\)"):
            await sender.publish(topic, [b"refused"])


async def test_acknowledgements_are_not_waited_for(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker waited for each acknowledgement to be written, through a future made and settled per ack."""
    sender, receiver = await backend(), await backend()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    waits: list[bool] = []
    basic_ack = aiormq.Channel.basic_ack

    async def recording(channel: aiormq.Channel, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        waits.append(wait)
        await basic_ack(channel, delivery_tag, multiple, wait)

    monkeypatch.setattr(aiormq.Channel, "basic_ack", recording)
    await sender.publish(topic, [b"%d" % n for n in range(200)])
    await inbox.wait(200)
    await wait_for(lambda: len(waits) >= 200 // 64, 5, "the acknowledgements of every ACK_EVERY messages")
    assert not any(waits), waits  # before: [True, True, True]


async def test_a_connection_busy_with_deliveries_and_confirms_is_not_taken_for_stuck(
    server: RabbitServer, backend: Factory, topic: str
) -> None:
    """Deliveries and confirms are taken as their bytes arrive, past aiormq's reader; RabbitMQ sends no heartbeat
    on a connection it sends other frames on, and aiormq closes one whose reader got no frame for (1 + 1) x 3 s."""
    changes: list[BackendState] = []
    uri = f"{server.uri}?heartbeat=1"
    sender, receiver = await backend(uri=uri, on_state=changes.append), await backend(uri=uri, on_state=changes.append)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    sent = 0
    loop = asyncio.get_running_loop()
    began = loop.time()
    while loop.time() - began < 8.0:  # past aiormq's 6 s
        sent += 1
        await sender.publish(topic, [b"%d" % sent])
        await asyncio.sleep(0.02)  # the pace of the traffic, not a wait for a condition
    assert len(await inbox.wait(sent)) == sent
    assert changes == [BackendState.CONNECTED, BackendState.CONNECTED], changes  # each one's start, no outage
