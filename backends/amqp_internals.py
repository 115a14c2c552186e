"""Every use of aiormq's internals, in one place: each meets a need aiormq has no public way to meet.

Nothing else of syncar touches aiormq's private members (pyproject.toml exempts this module alone from ruff's SLF
rule). An upgrade of aiormq that renames one of them makes tests/backends/test_library_internals.py fail, by name;
the backends' own tests fail too: every publish raises.

With the feathers-sync codec every event is a broker message of its own, three AMQP frames each way, and aiormq's
cost per frame and per message was most of a daemon's CPU (docs/benchmarks.md). What is here cuts it where it is:

- `BulkFrameReceiver` reads the connection's socket in large reads and cuts every frame out of what came, where
  aiormq awaited three reads under a lock per frame; `read_frames_in_bulk()` makes aiormq's connections use it.
- `publish` hands a batch to the connection's writer as frame groups, with one confirmation for the whole batch,
  settled by the broker's (grouped) acknowledgements as they come (`Confirms`), not a future per message.
- `deliver_without_tasks` assembles each delivery as the connection's reader hands its frames over and passes it
  on, in place of aiormq's queue to the channel's reader and a Task per message (`Deliveries`).
"""

from __future__ import annotations

import asyncio
import struct
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aiormq
import aiormq.connection
import pamqp.frame
from aiormq.abc import ChannelFrame, DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, ChannelInvalidStateError, DeliveryError, InvalidFrameError
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
_FRAME_END_BYTE = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_SHORT_HEADER = struct.Struct(">HHQ")  # class, weight, body size
_ACK = struct.Struct(">QB")  # Basic.Ack's delivery tag and bits (multiple)
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
            self._properties = properties
        return self._properties

    @properties.setter
    def properties(self, value: Basic.Properties) -> None:
        self._properties, self._payload = value, None  # the payload no longer says what the properties are


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
    if kind == _METHOD:
        method = payload[:4]
        if method == b"\x00\x3c\x00\x3c":  # Basic.Deliver
            return _basic_deliver(payload)
        if method == b"\x00\x3c\x00\x50":  # Basic.Ack, a publisher confirm: one per publish at a low rate
            tag, bits = _ACK.unpack_from(payload, 4)
            return Basic.Ack(tag, bool(bits & 1))  # pamqp's decoder took 12 µs, this 1.6
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


class Batch:
    __slots__ = ("confirmation", "first", "last", "left", "refusal")

    def __init__(self, first: int, last: int, confirmation: asyncio.Future[Any]) -> None:
        self.first, self.last, self.left, self.confirmation = first, last, last - first + 1, confirmation
        self.refusal: Basic.Nack | None = None


class Confirms:
    """A confirming channel's unconfirmed batches, settled by the broker's Basic.Ack and Basic.Nack frames.

    The connection's reader hands the channel its frames through `channel.frames.put`; this takes the place of that
    method and keeps the confirmations, passing every other frame on. A batch is confirmed once each of its
    delivery tags was acknowledged, by a frame of its own or by one that says `multiple` (all up to it: RabbitMQ
    acknowledges in groups), and refused if one of them was nacked.
    """

    def __init__(self, channel: aiormq.Channel) -> None:
        self.batches: deque[Batch] = deque()
        self.marshals: dict[str, FrameMarshal] = {}  # by exchange: what publish() marshals once per channel
        self.low = channel.delivery_tag + 1  # every tag below was settled
        self.ahead: set[int] = set()  # tags at or above `low` settled one by one
        self._queue = channel.frames
        channel.frames.put = self.put  # type: ignore[method-assign]

    async def put(self, item: tuple[int, Any]) -> None:
        frame = item[1]
        if isinstance(frame, (Basic.Ack, Basic.Nack)):
            self.settle(frame.delivery_tag, frame.multiple, frame if isinstance(frame, Basic.Nack) else None)
        else:
            await asyncio.Queue.put(self._queue, item)  # the method this one stands in for

    def settle(self, tag: int, multiple: bool, refusal: Basic.Nack | None) -> None:
        if tag < self.low or (tag in self.ahead and not multiple):  # settled before
            return
        if multiple:
            low, self.low = self.low, tag + 1
            counted = {t for t in self.ahead if t <= tag}  # settled before, counted then
            self.ahead -= counted
        else:
            low = tag
            if tag == self.low:
                self.low += 1
            else:
                self.ahead.add(tag)
            counted = set()
        while self.low in self.ahead:
            self.ahead.discard(self.low)
            self.low += 1
        for batch in self.batches:
            if batch.first > tag:
                break
            first, last = max(batch.first, low), min(batch.last, tag)
            if first > last:
                continue
            batch.left -= last - first + 1 - sum(first <= t <= last for t in counted)
            batch.refusal = batch.refusal or refusal
        while self.batches and self.batches[0].left <= 0:
            self._settled(self.batches.popleft())
        for batch in self.batches:  # confirmed one by one out of order: rare
            if batch.left <= 0:
                self._settled(batch)

    @staticmethod
    def _settled(batch: Batch) -> None:
        if batch.confirmation.done():  # cancelled: the publish gave up waiting
            return
        if batch.refusal is None:
            batch.confirmation.set_result(None)
        else:
            batch.confirmation.set_exception(DeliveryError(None, batch.refusal))


class FrameMarshal:
    """Messages as frames on the wire, the bytes pamqp would marshal (one exchange, routing key and set of
    properties): the method frame and the header's properties are marshalled once, not per message (pamqp took 40 to
    90 µs for the two, as much as the rest of a one-message batch's publish)."""

    def __init__(self, channel: aiormq.Channel, exchange: str, properties: Basic.Properties, routing_key: str) -> None:
        self.source, self.routing_key = properties, routing_key
        self.channel, self.max_body = channel.number, channel.max_content_size
        self.method = pamqp.frame.marshal(Basic.Publish(exchange=exchange, routing_key=routing_key), channel.number)
        self.properties = properties.marshal()

    def message(self, frames: list[bytes], body: bytes) -> None:
        size = _SHORT_HEADER.size + len(self.properties)
        header = _FRAME.pack(_HEADER, self.channel, size) + _SHORT_HEADER.pack(Basic.frame_id, 0, len(body))
        frames += (self.method, header, self.properties, _FRAME_END_BYTE)
        for start in range(0, len(body), self.max_body):  # none for an empty body, as aiormq's _split_body
            chunk = body[start : start + self.max_body]
            frames += (_FRAME.pack(_BODY, self.channel, len(chunk)), chunk, _FRAME_END_BYTE)


_confirms: weakref.WeakKeyDictionary[aiormq.Channel, Confirms] = weakref.WeakKeyDictionary()


async def publish(
    channel: aiormq.Channel, exchange: str, bodies: Sequence[bytes], properties: Basic.Properties, routing_key: str = ""
) -> Batch:
    """Queue a batch of messages for the connection's writer in frame groups of about GROUP_BYTES (a small batch:
    one group, one write), marshalled as the last batch to the same exchange was if `properties` is the same object
    (do not change it in place). The batch returned says how many of its messages are still to be confirmed (`left`);
    its `confirmation` is done once the broker confirmed every one, fails with DeliveryError if it refused one, and
    fails as aiormq's do if the channel closes first. The channel must have
    publisher confirms on, and nothing else may publish on it.

    aiormq's basic_publish takes, per message, a Task of its own (to publish without waiting for the previous
    confirm), a lock, two timeout contexts, a random message id, a frame group of its own, which its writer task
    writes in a system call of its own a loop turn later, and a confirmation future, which its reader settles with
    a callback scheduled per message even when the broker acknowledged a hundred at once. This numbers the messages
    as basic_publish does, on the same state, and keeps one future for the batch (`Confirms`), with nothing
    awaited unless the writer's queue is full.
    """
    if channel.is_closed:
        raise ChannelInvalidStateError(f"{channel} closed")
    confirmation: asyncio.Future[Any] = channel.create_future()
    batch = Batch(channel.delivery_tag + 1, channel.delivery_tag + len(bodies), confirmation)
    if not bodies:
        confirmation.set_result(None)
        return batch
    confirms = _confirms.get(channel)
    if confirms is None:
        confirms = _confirms[channel] = Confirms(channel)
    confirms.batches.append(batch)
    marshal = confirms.marshals.get(exchange)
    if marshal is None or marshal.source is not properties or marshal.routing_key != routing_key:
        marshal = confirms.marshals[exchange] = FrameMarshal(channel, exchange, properties, routing_key)
    frames: list[bytes] = []
    size = 0
    queued = channel.delivery_tag  # the last message whose frames the writer has
    try:
        for index, body in enumerate(bodies):
            channel.delivery_tag += 1
            marshal.message(frames, body)
            size += len(body)
            if size >= GROUP_BYTES or index == len(bodies) - 1:
                # Returns at once unless the writer is behind (its queue holds 10 groups).
                await channel.write_queue.put(ChannelFrame(payload=b"".join(frames), should_close=False))
                queued, frames, size = channel.delivery_tag, [], 0
    except BaseException:
        # Not queued, so the broker will not count these: give their delivery tags back, as basic_publish does.
        # What was queued is still confirmed, into a batch nobody waits for.
        channel.delivery_tag = queued
        batch.last, batch.left = queued, queued - batch.first + 1
        if batch.left <= 0:
            confirms.batches.remove(batch)
        confirmation.cancel()
        raise
    return batch


class Deliveries:
    """Takes the place of a consuming channel's `frames.put`: assembles each Basic.Deliver with its content header
    and body frames as the connection's reader hands them over, and passes the message on; every other frame goes to
    the channel's reader as before."""

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
            delivery, header = self._delivery, self._header
            self._delivery = self._header = None
            body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self.deliver(DeliveredMessage(delivery=delivery, header=header, body=body, channel=self._channel))


_deliveries: weakref.WeakKeyDictionary[aiormq.Channel, Deliveries] = weakref.WeakKeyDictionary()


def deliver_without_tasks(channel: aiormq.Channel, deliver: Callable[[DeliveredMessage], None]) -> None:
    """Hand every message delivered on `channel` to `deliver`, in delivery order, as soon as the connection's reader
    has its last frame. For a channel with one consumer: whose it is goes unasked.

    aiormq's connection reader puts each frame in the channel's queue, the channel's reader takes it out a loop
    turn later, reads the message's frames through its queue and starts a Task per delivery to run the consumer's
    callback. `deliver` is called by the connection's reader instead (`Deliveries`), and may run the handler there
    (`amqp_subscription`); it must not block nor raise (the connection would end with it). What else the channel's
    reader does (confirms, returns, cancels, closes) is aiormq's.
    """
    deliveries = _deliveries.get(channel)
    if deliveries is None:
        _deliveries[channel] = Deliveries(channel, deliver)
    else:  # consuming again on the same channel: keep what is half-read, for the new consumer
        deliveries.deliver = deliver


read_frames_in_bulk()  # imported only with the AMQP backend: every connection it opens reads in bulk
