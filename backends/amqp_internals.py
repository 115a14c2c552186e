"""Every use of aiormq's internals, in one place: each meets a need aiormq has no public way to meet.

Nothing else of syncar touches aiormq's private members (pyproject.toml exempts this module alone from ruff's SLF
rule). An upgrade of aiormq that renames one of them makes tests/backends/test_library_internals.py fail, by name;
the backends' own tests fail too: every publish raises.

With the feathers-sync codec every event is a broker message of its own, three AMQP frames each way, and aiormq's
cost per frame and per message was most of a daemon's CPU (docs/benchmarks/history.md, "The feathers-sync codec on
RabbitMQ"). What is here cuts it where it is:

- `BulkFrameReceiver` reads the connection's socket in large reads and cuts every frame out of what came, where
  aiormq awaited three reads under a lock per frame; `read_frames_in_bulk()` makes aiormq's connections use it.
- `publish` hands a batch to the connection's writer as frame groups, with one confirmation for the whole batch,
  settled by the broker's (grouped) acknowledgements as they come (`Confirms`), not a future per message; when the
  writer Task has nothing queued, the publish writes its group itself (`Writer`), a turn of the loop less.
- `deliver_without_tasks` assembles each delivery as the connection's reader hands its frames over and passes it
  on, in place of aiormq's queue to the channel's reader and a Task per message (`Deliveries`).
- Whole deliveries and confirms are taken as their bytes arrive, in the loop's I/O callback, while aiormq's reader
  waits with nothing half-read (`BulkFrameReceiver._arrived`): at 1,000 messages a second most come alone, and
  each woke the reader Task for a turn of the loop and three `async for` steps (28 µs of a receiving backend's 95
  per message). Everything else, and whatever arrives cut, still goes through aiormq's reader, in order.

The frames themselves, as bytes, are `backends.amqp_frames`'.
"""

from __future__ import annotations

import asyncio
import struct
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import aiormq
import aiormq.connection
from aiormq.abc import ChannelFrame, DeliveredMessage, TaskType, TaskWrapper
from aiormq.exceptions import AMQPConnectionError, ChannelInvalidStateError, DeliveryError, InvalidFrameError
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException

from backends.amqp_frames import (
    ACK,
    BASIC_ACK,
    FRAME,
    FRAME_END,
    HEARTBEAT,
    METHOD,
    Deliveries,
    FrameMarshal,
    Taker,
    unmarshal,
    whole,
)

#: Bodies in one frame group at most: a small batch goes out in one write, a large one in writes of about this
#: size, so the broker routes the first messages while the rest are still being written.
GROUP_BYTES = 256 * 1024
#: How much BulkFrameReceiver asks the socket's reader for at a time.
READ_BYTES = 256 * 1024

#: Seconds: while every frame that arrives is taken as it arrives, aiormq's reader is told this often that the broker
#: is there (a heartbeat frame), well within the 3 heartbeats after which aiormq takes the connection for stuck.
HANDED_EVERY = 1.0


class BulkFrameReceiver(aiormq.connection.FrameReceiver):
    """aiormq's FrameReceiver, reading what the socket has (up to READ_BYTES) and cutting the frames out of it.

    aiormq's awaits three reads under a lock and copies each frame through a BytesIO, 3 frames per message; this
    awaits only when no whole frame is buffered. It yields what aiormq's does: (bytes, channel, frame), pamqp's
    frames (content headers decode their properties when read), the same errors."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._buffer = b""
        self._offset = 0
        #: By channel number: the channel, and what takes its deliveries or confirms as their bytes arrive.
        self.takers: dict[int, tuple[aiormq.Channel, Taker]] = {}
        self._idle = False  # waiting for bytes with nothing half-read: what arrives now may be taken at once
        self._fed = False  # bytes were given to the reader since it began waiting
        self._loop = asyncio.get_running_loop()
        self._handed_at = self._loop.time()  # when aiormq's reader was last given bytes
        self._feed = reader.feed_data
        reader.feed_data = self._arrived  # type: ignore[method-assign,assignment]

    def _arrived(self, data: bytes) -> None:
        """The connection's bytes as they arrive (the StreamReader's feed_data). While aiormq's reader waits with
        nothing half-read, the whole deliveries and confirms at their head are taken here, in the loop's I/O callback:
        no wake-up of the reader Task, no turn of the loop, no trip through its `async for` per frame. The rest,
        from the first frame of another kind, goes to the reader as before, in order."""
        if self._idle and not self._fed and self.takers:
            taken = self._take(data)
            if taken:
                now = self._loop.time()
                if taken == len(data):
                    if now - self._handed_at < HANDED_EVERY:
                        return
                    # aiormq takes a connection that handed it no frame for 3 heartbeats for stuck (and closes it):
                    # tell it that the broker is there, with the frame a broker sends for that.
                    data = HEARTBEAT
                else:
                    data = data[taken:]
        self._fed = True
        self._handed_at = self._loop.time()
        self._feed(data)

    def _take(self, data: bytes) -> int:
        """How many bytes at the head of `data` were whole frames taken by the takers."""
        offset, end = 0, len(data)
        while offset + FRAME.size < end:
            _kind, number, _size = FRAME.unpack_from(data, offset)
            taker = self.takers.get(number)
            if taker is None or taker[0].is_closed:
                break
            taken = taker[1].take(data, offset, number)
            if taken == offset:
                break
            offset = taken
        return offset

    async def _fill(self, needed: int) -> None:
        """Read until `needed` bytes from the offset are buffered."""
        async with self.lock:
            while len(self._buffer) - self._offset < needed:
                self._idle, self._fed = self.started and self._offset == len(self._buffer), False
                try:
                    data = await self.reader.read(READ_BYTES)
                except OSError as exc:  # ConnectionError included, as aiormq words it
                    raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
                finally:
                    self._idle = False
                if not data:
                    have = len(self._buffer) - self._offset
                    raise AMQPConnectionError(
                        f"Server connection unexpectedly closed. Read {have} bytes but {needed} bytes expected"
                    )
                self._buffer, self._offset = self._buffer[self._offset :] + data, 0

    async def get_frame(self) -> aiormq.connection.ReceivedFrame:
        # The end of the stream is a lost connection wherever it comes, between two frames too: aiormq's receiver
        # stops iterating there, its reader ends as if closed cleanly, and every call waiting on the connection fails
        # with a bare Exception (start() raised it, after a Connection.OpenOk with the end right behind it). A
        # connection closed in order ends before: aiormq's reader returns on Connection.CloseOk.
        if len(self._buffer) - self._offset < FRAME.size:
            await self._fill(FRAME.size)
        buffer, start = self._buffer, self._offset
        if not self.started:
            if buffer.startswith(b"AMQP", start):  # the broker's own protocol header: it does not speak ours
                raise aiormq.exceptions.ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
        kind, channel, size = FRAME.unpack_from(buffer, start)
        end = start + FRAME.size + size + 1
        if end > len(buffer):
            await self._fill(end - start)
            buffer, start = self._buffer, self._offset
            end = start + FRAME.size + size + 1
        if buffer[end - 1] != FRAME_END:
            raise InvalidFrameError(f"frame of type {kind} on channel {channel} does not end with FRAME_END")
        self._offset = end
        try:
            return end - start, channel, unmarshal(kind, buffer[start:end], buffer[start + FRAME.size : end - 1])
        except (PAMQPException, struct.error, IndexError, UnicodeDecodeError) as exc:
            raise InvalidFrameError(str(exc)) from exc


def _running(task: TaskType) -> tuple[asyncio.Task[Any], dict[str, Any]]:
    """An aiormq Task (its TaskWrapper's Task) and the locals of what it runs; none once it has ended."""
    inner = task.task if isinstance(task, TaskWrapper) else task
    frame = getattr(inner.get_coro(), "cr_frame", None)
    return inner, frame.f_locals if frame is not None else {}


def _take_as_they_arrive(channel: aiormq.Channel, taker: Taker) -> None:
    """Have the channel's connection's receiver hand `taker` its frames as they arrive (`BulkFrameReceiver._arrived`);
    nothing if the connection's reader has ended."""
    _task, local = _running(cast(aiormq.Connection, channel.connection)._reader_task)
    receiver = local.get("frame_receiver")
    if isinstance(receiver, BulkFrameReceiver):
        receiver.takers[channel.number] = channel, taker


class Writer:
    """Writes to the connection as aiormq's writer Task does (it writes each group it takes, whole, in its turn),
    when that Task has nothing queued and the socket nothing unsent: a turn of the loop sooner, and one turn less."""

    def __init__(self, channel: aiormq.Channel) -> None:
        self._queue = channel.write_queue
        self._task, local = _running(cast(aiormq.Connection, channel.connection)._writer_task)
        writer = local.get("writer")
        self._writer = writer if isinstance(writer, asyncio.StreamWriter) else None

    async def write(self, payload: bytes) -> None:
        writer = self._writer
        if (
            writer is None
            or not self._queue.empty()
            or self._task.done()
            or self._task.cancelling()  # closing the connection: what it still writes is its own
            or writer.is_closing()
            or writer.transport.get_write_buffer_size()
        ):
            # Returns at once unless the writer is behind (its queue holds 10 groups).
            await self._queue.put(ChannelFrame(payload=payload, should_close=False))
        else:
            writer.write(payload)


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
        self.writer: Writer | None = None  # publish()'s, made with the first batch
        self._queue = channel.frames
        channel.frames.put = self.put  # type: ignore[method-assign]

    async def put(self, item: tuple[int, Any]) -> None:
        frame = item[1]
        if isinstance(frame, (Basic.Ack, Basic.Nack)):
            self.settle(frame.delivery_tag, frame.multiple, frame if isinstance(frame, Basic.Nack) else None)
        else:
            await asyncio.Queue.put(self._queue, item)  # the method this one stands in for

    def take(self, data: bytes, offset: int, channel: int) -> int:
        """A Basic.Ack as it arrives (a Nack, rare, goes aiormq's way)."""
        end = whole(data, offset, METHOD, channel)
        start = offset + FRAME.size
        if not end or end - start - 1 != 4 + ACK.size or data[start : start + 4] != BASIC_ACK:
            return offset
        tag, bits = ACK.unpack_from(data, start + 4)
        self.settle(tag, bool(bits & 1), None)
        return end

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
        confirms.writer = Writer(channel)
        _take_as_they_arrive(channel, confirms)
    writer = confirms.writer
    assert writer is not None  # set with the Confirms
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
                await writer.write(b"".join(frames))
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
        deliveries = _deliveries[channel] = Deliveries(channel, deliver)
        _take_as_they_arrive(channel, deliveries)
    else:  # consuming again on the same channel: keep what is half-read, for the new consumer
        deliveries.deliver = deliver


read_frames_in_bulk()  # imported only with the AMQP backend: every connection it opens reads in bulk
