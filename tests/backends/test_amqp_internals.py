"""backends/amqp_internals.py: frames read in bulk, deliveries assembled as the connection's reader hands their
frames over. The frames are checked against aiormq's and pamqp's own; the counts against a real RabbitMQ (what each
message used to cost: three frame reads, three trips through the channel's queue)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
import pamqp.frame
import pytest
from aiormq.exceptions import AMQPConnectionError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from backends.amqp import AmqpBackend
from backends.amqp_internals import BulkFrameReceiver
from backends.base import BackendConfig
from tests.backends.support import Inbox, Started
from tests.brokers.rabbitmq import RabbitServer

AIORMQ_RECEIVER = BulkFrameReceiver.__mro__[1]  # aiormq's own, which BulkFrameReceiver replaced on import


def stream() -> list[tuple[int, Any]]:
    properties = Basic.Properties(content_type="application/json", headers={"origin": "a"}, delivery_mode=2)
    return [
        (2, Basic.Deliver("ctag", 5, True, "feathers-sync", "")),
        (2, ContentHeader(0, 300, properties)),
        (2, ContentBody(b"b" * 200)),
        (2, ContentBody(b"c" * 100)),
        (0, Heartbeat()),
        (1, Basic.Ack(9, multiple=True)),
        (2, Basic.Deliver("ctag", 6, False, "feathers-sync", "queue-binding")),
        (2, ContentHeader(0, 0, Basic.Properties())),
        (1, Basic.Nack(10, multiple=False, requeue=False)),
    ]


async def received(receiver_class: type[Any], data: bytes, chunk: int) -> list[tuple[int, int, bytes]]:
    reader = asyncio.StreamReader()
    for start in range(0, len(data), chunk):
        reader.feed_data(data[start : start + chunk])
    reader.feed_eof()
    receiver = receiver_class(reader)
    # Each frame marshalled again, so a content header's properties are read (and compared) too.
    return [(size, channel, pamqp.frame.marshal(frame, channel)) async for size, channel, frame in receiver]


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
async def test_bulk_reads_yield_the_frames_aiormq_reads(chunk: int) -> None:
    data = b"".join(pamqp.frame.marshal(frame, channel) for channel, frame in stream())
    assert await received(BulkFrameReceiver, data, chunk) == await received(AIORMQ_RECEIVER, data, 7)
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await received(BulkFrameReceiver, data[:-3], chunk)  # cut in the middle of the last frame


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
