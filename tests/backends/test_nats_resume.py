"""Durable mode's consumer against a real `nats-server -js` when the cluster loses part of the conversation: a
delivery, or an acknowledgement. A proxy that reads the NATS protocol drops one at will, on one server.

- A delivery lost on the way: fault case 8 (tests/faults/test_cluster_nats.py: the node the receiving daemon is
  connected to is SIGKILLed) lost acknowledged events this way. nats-py carried the consumer's inbox to another
  node, the consumer leader (on a live node) went on filling the pull request there, and the delivery that was on
  its way through the dead node was simply missing from what arrived. The ones after it must not be handled first.
- An acknowledgement lost: fault case 7 (the publishing daemon's node SIGKILLed, the receiver's node up) once lost
  every acked event after the kill. The receiver's consumer was led by the killed node, and the leader elected
  after it knew of a delivery the receiver had handled but not of its acknowledgement. The resume then deleted the
  consumer and made it again: a new raft group, whose creation JetStream answers only once the group has a leader,
  4-9 s in nats-server 2.9 when it prefers the dead node. A resume must keep the consumer then; a recreated
  consumer is seen by its creation time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from backends.base import BackendConfig, BackendUnavailable, Mode
from backends.nats import NatsJetStreamBackend
from backends.nats_consumer import DurableSubscription
from backends.nats_jetstream import jetstream_name
from tests.backends.support import Inbox, Started
from tests.brokers import serve
from tests.brokers.nats import NatsServer
from tests.utils import eventually, wait_for

pytestmark = pytest.mark.nats

#: Well under the consumer's ACK_WAIT (30 s), after which the server sends a lost or unacknowledged message again.
RECOVERY = 10.0
JS_ACK = b"$JS.ACK."


class LossyProxy:
    """A TCP proxy to a NATS server that forwards everything, except what it is armed to drop, once:

    - `drop_next_delivery()`: the next JetStream delivery (a MSG or HMSG with a `$JS.ACK.` reply) on its way to the
      client, as on a route through a node that died. The server counts it delivered; the client never hears of it.
    - `drop_next_ack()`: the next acknowledgement (a PUB to a `$JS.ACK.` subject) on its way to the server, as with a
      node that died before it could tell the others. The client handled the message; the server still counts it
      unacknowledged.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.dropped: list[bytes] = []  # the control lines of what was dropped
        self._deliveries = self._acks = False  # armed
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_next_delivery(self) -> None:
        self._deliveries = True

    def drop_next_ack(self) -> None:
        self._acks = True

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        for pipe in (
            self._pipe(client_reader, server_writer, self._ack),
            self._pipe(server_reader, client_writer, self._delivery),
        ):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _ack(self, words: list[bytes]) -> bool:
        """A client's PUB <subject> [reply] <size> or HPUB <subject> [reply] <header size> <size>: drop it?"""
        if words[0] not in (b"PUB", b"HPUB") or not (self._acks and words[1].startswith(JS_ACK)):
            return False
        self._acks = False
        return True

    def _delivery(self, words: list[bytes]) -> bool:
        """A server's MSG <subject> <sid> [reply] <size> or HMSG <subject> <sid> [reply] <hdr size> <size>: drop?"""
        reply = words[3] if len(words) == (5 if words[0] == b"MSG" else 6) else b""
        if not (self._deliveries and reply.startswith(JS_ACK)):
            return False
        self._deliveries = False
        return True

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: Callable[[list[bytes]], bool]
    ) -> None:
        """One protocol line (with a message's payload) at a time; a message `drop` picks is not forwarded."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                line = await reader.readuntil(b"\r\n")
                words = line.split()
                if words and words[0] in (b"PUB", b"HPUB", b"MSG", b"HMSG"):
                    payload = await reader.readexactly(int(words[-1]) + 2)
                    if drop(words):
                        self.dropped.append(line)
                        continue
                    line += payload
                writer.write(line)
                await writer.drain()
        writer.close()


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    yield from serve(NatsServer())


@pytest.fixture
async def proxy(server: NatsServer) -> AsyncIterator[LossyProxy]:
    async with LossyProxy(server.port) as lossy:
        yield lossy


@pytest.fixture
async def jsm(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(server.uri)
    yield client.jetstream()
    await client.close()


Factory = Callable[[str, str], Awaitable[NatsJetStreamBackend]]


@pytest.fixture
def connect(started: Started) -> Factory:
    async def start(instance: str, uri: str) -> NatsJetStreamBackend:
        return await started(NatsJetStreamBackend(BackendConfig(uri, instance, mode=Mode.DURABLE)))

    return start


def bodies(start: int, stop: int) -> list[bytes]:
    return [b"%d" % i for i in range(start, stop)]


async def test_a_delivery_lost_on_the_way_is_handled_in_order_before_the_ones_after_it(
    server: NatsServer, proxy: LossyProxy, connect: Factory, jsm: JetStreamContext, topic: str
) -> None:
    receiver = await connect("r", f"nats://127.0.0.1:{proxy.port}")
    sender = await connect("s", server.uri)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, bodies(0, 5))
    assert await inbox.wait(5) == bodies(0, 5)
    proxy.drop_next_delivery()
    await sender.publish(topic, [b"5"])
    await wait_for(lambda: bool(proxy.dropped), RECOVERY, "the proxy to drop the delivery of 5")
    stream, consumer = jetstream_name(topic), jetstream_name("r")

    async def only_5_unacknowledged() -> bool:  # the acknowledgements of 0-4 may still be on their way
        info: api.ConsumerInfo = await jsm.consumer_info(stream, consumer)  # unannotated in nats-py
        return info.num_ack_pending == 1

    await eventually(only_5_unacknowledged, RECOVERY, "the acknowledgements of 0-4")
    info = await jsm.consumer_info(stream, consumer)
    assert info.num_ack_pending == 1 and info.delivered.stream_seq == 6  # the server counts 5 delivered
    await sender.publish(topic, bodies(6, 10))
    # Without the check of the consumer sequence, 6-9 are handled at once and 5 comes after ACK_WAIT (30 s).
    assert await inbox.wait(10, RECOVERY) == bodies(0, 10)
    assert inbox.positions == [str(n) for n in range(1, 11)]
    await sender.publish(topic, [b"10"])
    assert await inbox.wait(11, RECOVERY) == bodies(0, 11)  # read on, nothing twice


async def test_a_resume_keeps_the_consumer_when_only_acknowledgements_of_handled_messages_were_lost(
    proxy: LossyProxy,
    connect: Factory,
    jsm: JetStreamContext,
    topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "backends.nats_jetstream")
    receiver = await connect("r", f"nats://127.0.0.1:{proxy.port}")
    sender = await connect("s", f"nats://127.0.0.1:{proxy.upstream}")
    inbox = Inbox()
    subscription = await receiver.subscribe(topic, inbox)
    assert isinstance(subscription, DurableSubscription)
    await sender.publish(topic, bodies(0, 5))
    assert await inbox.wait(5) == bodies(0, 5)
    proxy.drop_next_ack()
    await sender.publish(topic, [b"5"])
    assert await inbox.wait(6, RECOVERY) == bodies(0, 6)
    await wait_for(lambda: bool(proxy.dropped), RECOVERY, "the proxy to drop the acknowledgement of 5")
    stream, consumer = jetstream_name(topic), jetstream_name("r")

    async def only_5_unacknowledged() -> bool:  # 0-4 (and later 6-9) acknowledged
        info: api.ConsumerInfo = await jsm.consumer_info(stream, consumer)  # unannotated in nats-py
        return info.num_ack_pending == 1

    await eventually(only_5_unacknowledged, RECOVERY, "the acknowledgements of 0-4")
    before = await jsm.consumer_info(stream, consumer)
    assert before.delivered.stream_seq == 6  # 5 handled, its acknowledgement lost
    # What a new consumer leader, a reconnect or a silence makes the subscription do.
    subscription.restore_soon()
    await wait_for(
        lambda: any("unacknowledged" in r.getMessage() for r in caplog.records), RECOVERY, "the consumer resumed"
    )
    await sender.publish(topic, bodies(6, 10))
    assert await inbox.wait(10, RECOVERY) == bodies(0, 10)  # in order, nothing twice
    assert inbox.positions == [str(n) for n in range(1, 11)]
    after = await jsm.consumer_info(stream, consumer)
    # Not deleted and made again: in a cluster that is a new raft group and its election (seconds).
    assert after.created == before.created
    await eventually(only_5_unacknowledged, RECOVERY, "the acknowledgements of 6-9")  # 5 comes after ACK_WAIT
    assert (await jsm.consumer_info(stream, consumer)).delivered.stream_seq == 10


async def test_a_resume_after_failed_attempts_says_how_many_and_how_long(
    connect: Factory, proxy: LossyProxy, topic: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warnings of failed attempts are rate-limited (one per WARN_EVERY): the line of the one that succeeds
    says how long the consumer could not be resumed (fault case 7 once logged one timeout, then nothing)."""
    caplog.set_level(logging.INFO, "backends.nats_consumer")
    uri = f"nats://127.0.0.1:{proxy.upstream}"
    receiver, sender = await connect("r", uri), await connect("s", uri)
    inbox = Inbox()
    subscription = await receiver.subscribe(topic, inbox)
    assert isinstance(subscription, DurableSubscription)
    attach, attempts = subscription.attach, 0

    async def flaky(client: Client, timeout: float) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise BackendUnavailable(f"nats: consumer {subscription.consumer} on {uri} failed: timed out")
        await attach(client, timeout)

    monkeypatch.setattr(subscription, "attach", flaky)
    for tried in (1, 2, 3):
        subscription.restore_soon()
        await wait_for(lambda: attempts == tried, RECOVERY, f"resume attempt {tried}")  # noqa: B023 - awaited at once
    await wait_for(
        lambda: any("resumed after 2 failed attempts" in r.getMessage() for r in caplog.records),
        RECOVERY,
        "the line of the resume that succeeded",
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "(attempt 1)" in warnings[0]  # the second was held back
    await sender.publish(topic, bodies(0, 3))
    assert await inbox.wait(3, RECOVERY) == bodies(0, 3)
