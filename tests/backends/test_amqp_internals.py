"""backends/amqp_internals.py: frames read in bulk, a batch marshalled by hand and confirmed as one, deliveries
assembled as the connection's reader hands their frames over. The bytes and frames are checked against aiormq's and
pamqp's own; the counts against a real RabbitMQ (what each message used to cost: a future, three frame reads, three
trips through the channel's queue)."""

from __future__ import annotations

import asyncio
import types
from typing import Any, cast

import aiormq
import pamqp.frame
import pytest
from aiormq.abc import ChannelFrame, DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, DeliveryError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from backends import amqp_internals
from backends.amqp import AmqpBackend
from backends.amqp_frames import Deliveries, FrameMarshal
from backends.amqp_internals import Batch, BulkFrameReceiver, Confirms
from backends.base import BackendConfig
from tests.backends.support import Inbox, Started
from tests.brokers.rabbitmq import RabbitServer
from tests.utils import wait_for

AIORMQ_RECEIVER = BulkFrameReceiver.__mro__[1]  # aiormq's own, which BulkFrameReceiver replaced on import


def stand_in(**attributes: object) -> aiormq.Channel:
    """An aiormq channel as far as the code under test reads it: only these attributes."""
    return cast(aiormq.Channel, types.SimpleNamespace(**attributes))


@pytest.mark.parametrize("body", [b"", b"a", b"x" * 99, b"y" * 100, b"z" * 250])
@pytest.mark.parametrize("properties", [Basic.Properties(delivery_mode=1), Basic.Properties(delivery_mode=2)])
@pytest.mark.parametrize("key", ["", "syncar-0123456789abcdef"])
def test_a_message_is_marshalled_as_aiormq_writes_it(body: bytes, properties: Basic.Properties, key: str) -> None:
    channel = stand_in(number=7, max_content_size=100)  # bodies over 100 bytes take several frames
    frames: list[bytes] = []
    FrameMarshal(channel, "feathers-sync", properties, key).message(frames, body)
    chunks = [ContentBody(body[start : start + 100]) for start in range(0, len(body), 100)]
    aiormqs = ChannelFrame.marshall(
        7,
        [Basic.Publish(exchange="feathers-sync", routing_key=key), ContentHeader(0, len(body), properties), *chunks],
    )
    assert b"".join(frames) == aiormqs.payload


def stream() -> list[tuple[int, Any]]:
    properties = Basic.Properties(content_type="application/json", headers={"origin": "a"}, delivery_mode=2)
    return [
        (2, Basic.Deliver("ctag", 5, True, "feathers-sync", "")),
        (2, ContentHeader(0, 300, properties)),
        (2, ContentBody(b"b" * 200)),
        (2, ContentBody(b"c" * 100)),
        (0, Heartbeat()),
        (1, Basic.Ack(9, multiple=True)),
        (1, Basic.Ack(2**40 + 3, multiple=False)),
        (2, Basic.Deliver("ctag", 6, False, "feathers-sync", "queue-binding")),
        (2, ContentHeader(0, 0, Basic.Properties())),
        (1, Basic.Nack(10, multiple=False, requeue=False)),
    ]


async def received(receiver_class: type[Any], data: bytes, chunk: int) -> tuple[list[tuple[int, int, bytes]], str]:
    """The frames read from `data`, then the end of the stream: and how the receiver told that end (its error, or
    "stopped" if it only stopped iterating)."""
    reader = asyncio.StreamReader()
    for start in range(0, len(data), chunk):
        reader.feed_data(data[start : start + chunk])
    reader.feed_eof()
    receiver = receiver_class(reader)
    frames: list[tuple[int, int, bytes]] = []
    try:
        async for size, channel, frame in receiver:
            # Each frame marshalled again, so a content header's properties are read (and compared) too.
            frames.append((size, channel, pamqp.frame.marshal(frame, channel)))
    except AMQPConnectionError as exc:
        return frames, str(exc)
    return frames, "stopped"


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
async def test_bulk_reads_yield_the_frames_aiormq_reads(chunk: int) -> None:
    data = b"".join(pamqp.frame.marshal(frame, channel) for channel, frame in stream())
    frames, end = await received(BulkFrameReceiver, data, chunk)
    assert frames == (await received(AIORMQ_RECEIVER, data, 7))[0]
    # The end of the stream between two frames is a lost connection, as in the middle of one (aiormq's receiver
    # stopped there, its reader ended as if closed cleanly, and the calls waiting failed with a bare Exception).
    assert end.startswith("Server connection unexpectedly closed"), end
    frames, end = await received(BulkFrameReceiver, data[:-3], chunk)  # cut in the middle of the last frame
    assert end.startswith("Server connection unexpectedly closed") and len(frames) == len(stream()) - 1


async def test_a_publisher_confirm_is_read_without_pamqps_generic_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """One Basic.Ack per publish at a low rate: pamqp's decoder took 12 µs for it, the frame's own fields 1.6."""
    decoded: list[bytes] = []
    unmarshal = pamqp.frame.unmarshal

    def recording(data: bytes) -> Any:
        decoded.append(data)
        return unmarshal(data)

    monkeypatch.setattr(pamqp.frame, "unmarshal", recording)
    frames = [(1, Basic.Ack(7, multiple=False)), (1, Basic.Ack(2**40, multiple=True)), (1, Basic.Nack(8))]
    data = b"".join(pamqp.frame.marshal(frame, channel) for channel, frame in frames)
    read = [frame for _size, _channel, frame in (await received(BulkFrameReceiver, data, 1 << 20))[0]]
    assert read == [pamqp.frame.marshal(frame, channel) for channel, frame in frames]
    assert len(decoded) == 1  # the Nack: rare


def confirms(*sizes: int) -> tuple[Confirms, list[asyncio.Future[Any]]]:
    """A Confirms over batches of these sizes, numbered from 1 as a channel's first publishes are."""
    kept = Confirms(stand_in(delivery_tag=0, frames=asyncio.Queue()))
    loop = asyncio.get_running_loop()
    futures, first = [], 1
    for size in sizes:
        futures.append(loop.create_future())
        kept.batches.append(Batch(first, first + size - 1, futures[-1]))
        first += size
    return kept, futures


def done(futures: list[asyncio.Future[Any]]) -> list[str]:
    return ["refused" if f.done() and f.exception() else "confirmed" if f.done() else "waiting" for f in futures]


async def test_a_batch_is_confirmed_once_every_message_is_whichever_way_the_broker_groups_its_acks() -> None:
    kept, futures = confirms(3, 3, 2)
    kept.settle(2, multiple=True, refusal=None)
    assert done(futures) == ["waiting"] * 3
    kept.settle(3, multiple=False, refusal=None)
    assert done(futures) == ["confirmed", "waiting", "waiting"]
    kept.settle(5, multiple=False, refusal=None)  # out of order: 4 still unconfirmed
    kept.settle(6, multiple=False, refusal=None)
    assert done(futures) == ["confirmed", "waiting", "waiting"]
    kept.settle(7, multiple=True, refusal=None)  # 4 and 7; 5 and 6 counted once
    assert done(futures) == ["confirmed", "confirmed", "waiting"]
    kept.settle(8, multiple=False, refusal=Basic.Nack(8))
    assert done(futures) == ["confirmed", "confirmed", "refused"]
    assert isinstance(futures[2].exception(), DeliveryError)
    assert not kept.batches and kept.low == 9 and not kept.ahead
    kept.settle(8, multiple=True, refusal=None)  # again: nothing left to settle, nothing breaks
    one, [future] = confirms(100)
    one.settle(100, multiple=True, refusal=None)  # RabbitMQ's usual answer to a batch: one frame
    assert done([future]) == ["confirmed"]


@pytest.mark.rabbitmq
async def test_a_batch_takes_one_confirmation_future_not_one_per_message(
    rabbitmq_server: RabbitServer, started: Started, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiormq settled a future per message, each with a callback scheduled per message of a grouped ack."""
    sender = await started(AmqpBackend(BackendConfig(rabbitmq_server.uri, "test-confirms")))
    receiver = await started(AmqpBackend(BackendConfig(rabbitmq_server.uri, "test-confirms-2")))
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"first"])  # the exchange declared
    futures: list[object] = []
    create_future = aiormq.Channel.create_future

    def counting(channel: aiormq.Channel) -> asyncio.Future[Any]:
        if channel.publisher_confirms:  # the sender's publishing channel, not the receiver's (acks' drain futures)
            futures.append(channel)
        return create_future(channel)

    monkeypatch.setattr(aiormq.Channel, "create_future", counting)
    bodies = [b"%d" % n for n in range(100)]
    await sender.publish(topic, bodies)  # returns once the broker confirmed all 100
    assert len(futures) == 1, len(futures)  # before: 100
    assert (await inbox.wait(101))[1:] == bodies


@pytest.mark.rabbitmq
async def test_deliveries_are_read_in_bulk_and_skip_the_channels_queue(
    rabbitmq_server: RabbitServer, started: Started, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiormq read each frame in three awaited reads and passed it through the channel's queue to the channel's
    reader: for a message, nine reads and three trips through a queue."""
    sender = await started(AmqpBackend(BackendConfig(rabbitmq_server.uri, "test-deliveries")))
    receiver = await started(AmqpBackend(BackendConfig(rabbitmq_server.uri, "test-deliveries-2")))
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"first"])
    await inbox.wait(1)
    reads: list[str] = []
    queued: list[str] = []
    get_frame = aiormq.Channel._get_frame  # noqa: SLF001 - counted, to show deliveries no longer take this way

    async def counting_get_frame(channel: aiormq.Channel) -> Any:
        frame = await get_frame(channel)
        queued.append(type(frame).__name__)
        return frame

    def counting(name: str, method: Any) -> Any:
        async def count(self: asyncio.StreamReader, *args: Any) -> bytes:
            reads.append(name)
            data: bytes = await method(self, *args)
            return data

        return count

    monkeypatch.setattr(aiormq.Channel, "_get_frame", counting_get_frame)
    for name in ("read", "readexactly"):
        monkeypatch.setattr(asyncio.StreamReader, name, counting(name, getattr(asyncio.StreamReader, name)))
    bodies = [b"%d" % n + b"x" * 256 for n in range(100)]
    await sender.publish(topic, bodies)
    assert (await inbox.wait(101))[1:] == bodies
    monkeypatch.undo()
    # Before: 900 readexactly for the receiver's 300 frames (and the sender's confirmations), 300 frames queued.
    assert "readexactly" not in reads and len(reads) < 300, reads  # fewer reads than frames
    assert "Deliver" not in queued and "ContentBody" not in queued, queued


def taken_stream() -> tuple[bytes, list[bytes]]:
    """Three deliveries on channel 2 (one of two body frames, one empty) and two confirms on channel 1, then a
    heartbeat and a fourth delivery: the bytes, and the bodies."""
    bodies = [b"a" * 150, b"", b"c" * 10, b"d" * 20]
    frames: list[tuple[int, Any]] = []
    for tag, body in enumerate(bodies[:3], 1):
        frames += [(2, Basic.Deliver("ctag", tag, False, "feathers-sync", "")), (2, ContentHeader(0, len(body)))]
        frames += [(2, ContentBody(body[start : start + 100])) for start in range(0, len(body), 100)]
    frames += [(1, Basic.Ack(1, multiple=False)), (1, Basic.Ack(3, multiple=True)), (0, Heartbeat())]
    frames += [(2, Basic.Deliver("ctag", 4, False, "feathers-sync", "")), (2, ContentHeader(0, 20))]
    frames += [(2, ContentBody(bodies[3]))]
    return b"".join(pamqp.frame.marshal(frame, channel) for channel, frame in frames), bodies


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
async def test_whole_deliveries_and_confirms_are_taken_as_they_arrive_and_the_rest_is_read_in_order(chunk: int) -> None:
    """Deliveries and confirms whose bytes arrive whole while aiormq's reader waits are taken in the connection's
    I/O callback: no wake-up of the reader Task, no turn of the loop, no `async for` step per frame (28 µs of a
    receiving backend's 95 per message). What arrives cut, and every other frame, is read by it as before, in order."""
    reader = asyncio.StreamReader()
    receiver = BulkFrameReceiver(reader)
    consuming = stand_in(is_closed=False, frames=asyncio.Queue())
    got: list[DeliveredMessage] = []
    deliveries = Deliveries(consuming, got.append)
    publishing = stand_in(is_closed=False, frames=asyncio.Queue(), delivery_tag=0)
    kept = Confirms(publishing)
    confirmation = asyncio.get_running_loop().create_future()
    kept.batches.append(Batch(1, 3, confirmation))
    receiver.takers.update({2: (consuming, deliveries), 1: (publishing, kept)})
    puts: dict[int, Deliveries | Confirms] = {2: deliveries, 1: kept}
    handed: list[str] = []

    async def aiormqs_reader() -> None:  # what aiormq's connection reader does with each frame
        async for _size, number, frame in receiver:
            handed.append(type(frame).__name__)
            await puts[number].put((0, frame)) if number else None

    reading = asyncio.create_task(aiormqs_reader())
    reader.feed_data(pamqp.frame.marshal(Heartbeat(), 0))  # the first frame read: the receiver has started
    await wait_for(lambda: handed == ["Heartbeat"], 5, "the first frame read")
    data, bodies = taken_stream()
    for start in range(0, len(data), chunk):
        reader.feed_data(data[start : start + chunk])
        await asyncio.sleep(0)  # the reader may read between two chunks, or not: the order is the same
    await wait_for(lambda: len(got) == 4, 5, "the four deliveries")
    assert [message.body for message in got] == bodies
    assert [message.delivery.delivery_tag for message in got] == [1, 2, 3, 4]  # type: ignore[union-attr]
    assert confirmation.done() and confirmation.exception() is None
    if chunk == 1 << 20:  # all at once: what came before the heartbeat was taken as it arrived
        assert handed == ["Heartbeat", "Heartbeat", "Deliver", "LazyContentHeader", "ContentBody"], handed
    reading.cancel()


async def test_frames_all_taken_as_they_arrive_still_tell_aiormq_the_broker_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiormq closes a connection whose reader was handed no frame for 3 heartbeats, taking it for stuck; with every
    delivery taken as it arrives, a busy connection would look silent to it."""
    monkeypatch.setattr(amqp_internals, "HANDED_EVERY", 0.0)
    reader = asyncio.StreamReader()
    receiver = BulkFrameReceiver(reader)
    consuming = stand_in(is_closed=False, frames=asyncio.Queue())
    got: list[DeliveredMessage] = []
    receiver.takers[2] = (consuming, Deliveries(consuming, got.append))
    handed: list[str] = []

    async def aiormqs_reader() -> None:
        async for _size, _number, frame in receiver:
            handed.append(type(frame).__name__)

    reading = asyncio.create_task(aiormqs_reader())
    reader.feed_data(pamqp.frame.marshal(Heartbeat(), 0))
    await wait_for(lambda: handed == ["Heartbeat"], 5, "the first frame read")
    message: list[pamqp.frame.FrameTypes] = [
        Basic.Deliver("ctag", 1, False, "x", ""),
        ContentHeader(0, 1),
        ContentBody(b"1"),
    ]
    reader.feed_data(b"".join(pamqp.frame.marshal(frame, 2) for frame in message))
    await wait_for(lambda: len(handed) == 2, 5, "a heartbeat handed to aiormq's reader")
    assert handed == ["Heartbeat", "Heartbeat"] and [m.body for m in got] == [b"1"]
    reading.cancel()
