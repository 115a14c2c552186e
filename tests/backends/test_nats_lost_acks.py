"""Durable mode's consumer against a real `nats-server -js` when acknowledgements are lost: a resume keeps the
consumer as it is if every message it holds unacknowledged was handled here.

Fault case 7 of the suite (tests/faults/test_cluster_nats.py: the node the publishing daemon is connected to is
SIGKILLed, the receiver's node stays up) lost every acked event after the kill once: the receiver's consumer was
led by the killed node, and the leader elected after it knew of a delivery the receiver had handled but not of its
acknowledgement. The resume then deleted the consumer and made it again: a new raft group, whose creation JetStream
answers only once the group has a leader, 4-9 s in nats-server 2.9 when it prefers the dead node, on top of the
election of the first. The receiver was still waiting when the test ended. A proxy that drops one acknowledgement
makes that state at will on one server; a recreated consumer is seen by its creation time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from backends.base import BackendConfig, BackendUnavailable, Mode
from backends.nats import NatsBackend, NatsJetStreamBackend
from backends.nats_consumer import DurableSubscription
from backends.nats_jetstream import jetstream_name
from tests.backends.support import Inbox, Started
from tests.brokers import serve
from tests.brokers.nats import NatsServer
from tests.utils import eventually, wait_for

pytestmark = pytest.mark.nats

#: Well under the consumer's ACK_WAIT (30 s), after which the server sends an unacknowledged message again.
RECOVERY = 10.0


class AckDropper:
    """A TCP proxy to a NATS server that forwards everything, except that once armed it drops the next JetStream
    acknowledgement (a PUB to a `$JS.ACK.` subject) on its way to the server: lost, as with a node that died before
    it could tell the others. The client handled the message; the server still counts it unacknowledged."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.dropped: list[bytes] = []  # the control lines of the acknowledgements dropped
        self._armed = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> AckDropper:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_next_ack(self) -> None:
        self._armed = True

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        for pipe in (self._filter(client_reader, server_writer), self._copy(server_reader, client_writer)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _filter(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The client's side, one protocol line (and a message's payload) at a time."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                line = await reader.readuntil(b"\r\n")
                words = line.split()
                if words and words[0] in (b"PUB", b"HPUB"):
                    # PUB <subject> [reply] <size>; HPUB <subject> [reply] <header size> <size>
                    line += await reader.readexactly(int(words[-1]) + 2)
                    if self._armed and words[1].startswith(b"$JS.ACK."):
                        self._armed = False
                        self.dropped.append(words[1])
                        continue
                writer.write(line)
                await writer.drain()
        writer.close()


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    yield from serve(NatsServer())


@pytest.fixture
async def dropper(server: NatsServer) -> AsyncIterator[AckDropper]:
    async with AckDropper(server.port) as proxy:
        yield proxy


@pytest.fixture
async def jsm(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(server.uri)
    yield client.jetstream()
    await client.close()


Factory = Callable[[str, str], Awaitable[NatsBackend]]


@pytest.fixture
def connect(started: Started) -> Factory:
    async def start(instance: str, uri: str) -> NatsBackend:
        return await started(NatsJetStreamBackend(BackendConfig(uri, instance, mode=Mode.DURABLE)))

    return start


def bodies(start: int, stop: int) -> list[bytes]:
    return [b"%d" % i for i in range(start, stop)]


async def test_a_resume_keeps_the_consumer_when_only_acknowledgements_of_handled_messages_were_lost(
    dropper: AckDropper,
    connect: Factory,
    jsm: JetStreamContext,
    topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "backends.nats_jetstream")
    receiver = await connect("r", f"nats://127.0.0.1:{dropper.port}")
    sender = await connect("s", f"nats://127.0.0.1:{dropper.upstream}")
    inbox = Inbox()
    subscription = await receiver.subscribe(topic, inbox)
    assert isinstance(subscription, DurableSubscription)
    await sender.publish(topic, bodies(0, 5))
    assert await inbox.wait(5) == bodies(0, 5)
    dropper.drop_next_ack()
    await sender.publish(topic, [b"5"])
    assert await inbox.wait(6, RECOVERY) == bodies(0, 6)
    await wait_for(lambda: bool(dropper.dropped), RECOVERY, "the proxy to drop the acknowledgement of 5")
    stream, consumer = jetstream_name(topic), jetstream_name("r")

    async def only_5_unacknowledged() -> bool:  # 0-4 (and later 6-9) acknowledged
        return (await jsm.consumer_info(stream, consumer)).num_ack_pending == 1

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
    connect: Factory, dropper: AckDropper, topic: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warnings of failed attempts are rate-limited (one per WARN_EVERY): the line of the one that succeeds
    says how long the consumer could not be resumed (fault case 7 once logged one timeout, then nothing)."""
    caplog.set_level(logging.INFO, "backends.nats_consumer")
    uri = f"nats://127.0.0.1:{dropper.upstream}"
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
        await wait_for(lambda tried=tried: attempts == tried, RECOVERY, f"resume attempt {tried}")
    await wait_for(
        lambda: any("resumed after 2 failed attempts" in r.getMessage() for r in caplog.records),
        RECOVERY,
        "the line of the resume that succeeded",
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "(attempt 1)" in warnings[0]  # the second was held back
    await sender.publish(topic, bodies(0, 3))
    assert await inbox.wait(3, RECOVERY) == bodies(0, 3)
