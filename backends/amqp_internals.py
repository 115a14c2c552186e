"""Every use of aiormq's internals, in one place: each meets a need aiormq has no public way to meet.

Nothing else of syncar touches aiormq's private members (pyproject.toml exempts this module alone from ruff's SLF
rule). An upgrade of aiormq that renames one of them makes tests/backends/test_library_internals.py fail, by name;
the backends' own tests fail too: every publish raises.

With the feathers-sync codec every event is a broker message of its own, three AMQP frames each way, and aiormq's
cost per frame and per message was most of a daemon's CPU (docs/benchmarks.md). What is here cuts it where it is:

- `BulkFrameReceiver` reads the connection's socket in large reads and cuts every frame out of what came, where
  aiormq awaited three reads under a lock per frame; `read_frames_in_bulk()` makes aiormq's connections use it.
- `publish` hands a batch to the connection's writer as frame groups, each message with its confirmation future.
- `deliver_without_tasks` assembles each delivery as the connection's reader hands its frames over and passes it
  on, in place of aiormq's queue to the channel's reader and a Task per message (`Deliveries`).
"""

from __future__ import annotations

import asyncio
import struct
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import aiormq
import aiormq.connection
import pamqp.frame
from aiormq.abc import ChannelFrame, DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, ChannelInvalidStateError, InvalidFrameError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

#: Bodies in one frame group at most: a small batch goes out in one write, a large one in writes of about this
#: size, so the broker routes the first messages while the rest are still being written.
GROUP_BYTES = 256 * 1024
#: How much BulkFrameReceiver asks the socket's reader for at a time.
READ_BYTES = 256 * 1024

_FRAME = struct.Struct(">BHI")  # type, channel, size; then the payload and FRAME_END
_FRAME_END = 0xCE
_METHOD, _HEADER, _BODY = 1, 2, 3
_SHORT_HEADER = struct.Struct(">HHQ")  # class, weight, body size
_DELIVER = Basic.Deliver.index


class LazyContentHeader(ContentHeader):
    """A content header whose properties are decoded when first read: syncar reads only the body size."""

    def __init__(self, payload: bytes) -> None:
        self.class_id, self.weight, self.body_size = _SHORT_HEADER.unpack_from(payload)
        self._payload: bytes | None = payload
        self._properties: Basic.Properties | None = None

    @property
    def properties(self) -> Basic.Properties:
        if self._properties is None:
            properties, payload = Basic.Properties(), self._payload or b"\0\0"
            offset, flags = self._get_flags(payload[12:])
            properties.unmarshal(flags, payload[12 + offset :])
            self._properties, self._payload = properties, None
        return self._properties

    @properties.setter
    def properties(self, value: Basic.Properties) -> None:
        self._properties, self._payload = value, None


def _short_string(payload: bytes, offset: int) -> tuple[str, int]:
    end = offset + 1 + payload[offset]
    return payload[offset + 1 : end].decode(), end


def _basic_deliver(payload: bytes) -> Basic.Deliver:
    """A Basic.Deliver from its method frame's payload, as pamqp decodes it, without its generic decoder."""
    consumer_tag, offset = _short_string(payload, 4)
    (delivery_tag,) = struct.unpack_from(">Q", payload, offset)
    redelivered = bool(payload[offset + 8] & 1)
    exchange, offset = _short_string(payload, offset + 9)
    routing_key, _ = _short_string(payload, offset)
    deliver = Basic.Deliver.__new__(Basic.Deliver)  # without validate(): a regex match per message on the exchange
    deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered = consumer_tag, delivery_tag, redelivered
    deliver.exchange, deliver.routing_key = exchange, routing_key
    return deliver


def _unmarshal(kind: int, frame: bytes, payload: bytes) -> Any:
    """What pamqp.frame.unmarshal(frame)[2] is, cheaper for the frames every message has."""
    if kind == _BODY:
        return ContentBody(payload)
    if kind == _HEADER:
        return LazyContentHeader(payload)
    if kind == _METHOD and payload[:4] == b"\x00\x3c\x00\x3c":  # Basic.Deliver
        return _basic_deliver(payload)
    return pamqp.frame.unmarshal(frame)[2]


class BulkFrameReceiver(aiormq.connection.FrameReceiver):
    """aiormq's FrameReceiver, reading what the socket has (up to READ_BYTES) and cutting the frames out of it.

    aiormq's awaits three reads under a lock and copies each frame through a BytesIO, 3 frames per message; this
    awaits only when no whole frame is buffered. It yields what aiormq's does: (bytes, channel, frame), pamqp's
    frames (content headers decode their properties when read), the same errors."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._buffer = b""
        self._offset = 0

    async def _fill(self, needed: int) -> None:
        """Read until `needed` bytes from the offset are buffered."""
        async with self.lock:
            while len(self._buffer) - self._offset < needed:
                try:
                    data = await self.reader.read(READ_BYTES)
                except OSError as exc:  # ConnectionError included, as aiormq words it
                    raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
                if not data:
                    have = len(self._buffer) - self._offset
                    raise AMQPConnectionError(
                        f"Server connection unexpectedly closed. Read {have} bytes but {needed} bytes expected"
                    )
                self._buffer, self._offset = self._buffer[self._offset :] + data, 0

    async def get_frame(self) -> aiormq.connection.ReceivedFrame:
        if self._offset == len(self._buffer) and self.reader.at_eof():
            raise StopAsyncIteration
        if len(self._buffer) - self._offset < _FRAME.size:
            await self._fill(_FRAME.size)
        buffer, start = self._buffer, self._offset
        if not self.started:
            if buffer.startswith(b"AMQP", start):  # the broker's own protocol header: it does not speak ours
                raise aiormq.exceptions.ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
        kind, channel, size = _FRAME.unpack_from(buffer, start)
        end = start + _FRAME.size + size + 1
        if end > len(buffer):
            await self._fill(end - start)
            buffer, start = self._buffer, self._offset
            end = start + _FRAME.size + size + 1
        if buffer[end - 1] != _FRAME_END:
            raise InvalidFrameError(f"frame of type {kind} on channel {channel} does not end with FRAME_END")
        self._offset = end
        try:
            return end - start, channel, _unmarshal(kind, buffer[start:end], buffer[start + _FRAME.size : end - 1])
        except (PAMQPException, struct.error, IndexError, UnicodeDecodeError) as exc:
            raise InvalidFrameError(str(exc)) from exc


def read_frames_in_bulk() -> None:
    """Make every aiormq connection opened from now on read its frames with BulkFrameReceiver."""
    aiormq.connection.FrameReceiver = BulkFrameReceiver  # type: ignore[misc]


async def publish(
    channel: aiormq.Channel, exchange: str, bodies: Sequence[bytes], properties: Basic.Properties
) -> list[asyncio.Future[Any]]:
    """Queue a batch of messages for the connection's writer in frame groups of about GROUP_BYTES (a small batch:
    one group, one write), each message with the delivery tag and the confirmation future aiormq's basic_publish
    gives it; each future is done once the broker confirmed (or refused) its message, and fails as aiormq's do if
    the channel closes first. The channel must have publisher confirms on, and nothing else may publish on it.

    aiormq's basic_publish takes, per message, a Task of its own (to publish without waiting for the previous
    confirm), a lock, two timeout contexts, a random message id and a frame group of its own, which its writer task
    writes in a system call of its own a loop turn later: at one event at a time, a third of a millisecond between
    the app's frame and the broker's socket on a busy machine (docs/benchmarks.md). This does what basic_publish
    does for a message without `mandatory`, on the same state, with nothing awaited unless the writer's queue is
    full.
    """
    if channel.is_closed:
        raise ChannelInvalidStateError(f"{channel} closed")
    confirmations: list[asyncio.Future[Any]] = []
    frames: list[Any] = []
    size = 0
    queued = channel.delivery_tag  # the last message whose frames the writer has
    try:
        for index, body in enumerate(bodies):
            channel.delivery_tag += 1
            confirmation: asyncio.Future[Any] = channel.create_future()
            channel.confirmations[channel.delivery_tag] = confirmation
            confirmations.append(confirmation)
            frames += [
                Basic.Publish(exchange=exchange, routing_key=""),
                ContentHeader(properties=properties, body_size=len(body)),
                *channel._split_body(body),
            ]
            size += len(body)
            if size >= GROUP_BYTES or index == len(bodies) - 1:
                # Returns at once unless the writer is behind (its queue holds 10 groups).
                await channel.write_queue.put(ChannelFrame.marshall(frames=frames, channel_number=channel.number))
                queued, frames, size = channel.delivery_tag, [], 0
    except BaseException:
        # Not queued, so the broker will not count these: give their delivery tags back, as basic_publish does.
        for tag in range(queued + 1, channel.delivery_tag + 1):
            if (dropped := channel.confirmations.pop(tag, None)) is not None:
                dropped.cancel()
        channel.delivery_tag = queued
        raise
    return confirmations


class Deliveries:
    """Takes the place of a consuming channel's `frames.put`: assembles each Basic.Deliver with its content header
    and body frames as the connection's reader hands them over, and passes the message on; every other frame goes
    to the channel's reader as before."""

    def __init__(self, channel: aiormq.Channel, deliver: Callable[[DeliveredMessage], None]) -> None:
        self._channel, self.deliver, self._queue = channel, deliver, channel.frames
        self._delivery: Basic.Deliver | None = None
        self._header: ContentHeader | None = None
        self._parts: list[bytes] = []
        self._size = 0
        channel.frames.put = self.put  # type: ignore[method-assign]

    async def put(self, item: tuple[int, Any]) -> None:
        frame = item[1]
        if self._delivery is None:
            if isinstance(frame, Basic.Deliver):
                self._delivery = frame
            else:
                await asyncio.Queue.put(self._queue, item)  # the method this one stands in for
            return
        if self._header is None:
            if not isinstance(frame, ContentHeader):
                raise ValueError(f"Unexpected frame {frame!r} instead of ContentHeader", frame)
            self._header, self._parts, self._size = frame, [], 0
        elif isinstance(frame, ContentBody):
            self._parts.append(frame.value or b"")
            self._size += len(frame.value or b"")
        else:
            raise ValueError(f"Unexpected frame {frame!r}", frame)
        if self._size >= self._header.body_size:
            body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            message = DeliveredMessage(delivery=self._delivery, header=self._header, body=body, channel=self._channel)
            self._delivery = self._header = None
            self.deliver(message)


_deliveries: weakref.WeakKeyDictionary[aiormq.Channel, Deliveries] = weakref.WeakKeyDictionary()


def deliver_without_tasks(channel: aiormq.Channel, deliver: Callable[[DeliveredMessage], None]) -> None:
    """Hand every message delivered on `channel` to `deliver`, in delivery order, as soon as the connection's reader
    has its last frame. For a channel with one consumer: whose it is goes unasked.

    aiormq's connection reader puts each frame in the channel's queue, the channel's reader takes it out a loop
    turn later, reads the message's frames through its queue and starts a Task per delivery to run the consumer's
    callback, only for syncar's callback to put the message in a queue. `deliver` is called by the connection's
    reader instead (`Deliveries`); it must not block nor raise (the connection would end with it). What else the
    channel's reader does (confirms, returns, cancels, closes) is aiormq's.
    """
    deliveries = _deliveries.get(channel)
    if deliveries is None:
        _deliveries[channel] = Deliveries(channel, deliver)
    else:  # consuming again on the same channel: keep what is half-read, for the new consumer
        deliveries.deliver = deliver


read_frames_in_bulk()  # imported only with the AMQP backend: every connection it opens reads in bulk
