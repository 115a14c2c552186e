"""The outbox: publishes on their way to the broker, kept in order while it is away, sent in batches.

One task drains it. Whatever queues up while a broker write is in flight goes
out together in the next write, so batching costs no timer delay: an idle
daemon sends each event at once.

A batch the broker may have although it never confirmed it (the connection
went down, or the confirm was late) is sent again only if the codec carries
event ids, so that receivers drop the copy. With the feathers-sync codec it is
not sent again, but counted and refused: at most once, as broadcast promises.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from backends.base import (
    Backend,
    BackendClosed,
    BackendUnavailable,
    MessageTooLarge,
    PublishTimeout,
    PublishUnconfirmed,
)
from sidecar.backoff import Backoff
from sidecar.codec import NULL, Codec, Outgoing
from sidecar.logging import RateLimitedLogger
from sidecar.metrics import DropReason, Metrics
from sidecar.protocol import ErrorCode

if TYPE_CHECKING:  # imported only with --tracing, where its packages are (the otel extra)
    from sidecar.tracing import Tracing

log = logging.getLogger(__name__)
refusals = RateLimitedLogger(log, interval=10.0)

#: Events in one broker write at most; bounds the latency a big batch adds to the event behind it.
MAX_BATCH_EVENTS = 1024
#: Bytes of events in one broker write at most, if the broker takes more (Redis 8 MiB, RabbitMQ ~17 MiB): a batch
#: in flight is held three times over (the entries, the packed bodies, the broker library's buffer), and at 4 KiB
#: a batch of 1,024 took the daemon's peak memory ~10 MiB up, for no more throughput (docs/benchmarks/history.md, "Idle
#: memory, start and peak memory: what was cut").
#: An event larger than this still goes, alone, up to the broker's limit.
MAX_BATCH_BYTES = 1 << 20
RETRY_DELAY = 0.05
#: A broker that refuses a publish (not merely unreachable) is asked again with back-off up to this.
MAX_RETRY_DELAY = 2.0

#: What --outbox-bytes counts is memory, not payload: counted by payload alone, 64 MiB of tiny publishes took 388 MB.
#: An entry holds its event's JSON twice: the encoded `part`, and the client's line, which the event's `data` and
#: `context` (msgspec.Raw) keep alive; once, if the relay let go of those (a codec that packs parts alone).
JSON_COPIES = 2
#: Plus this much, whatever its size: the Outgoing and Event structs, their floats and strings (id, path, event
#: name), two Raw objects, the bytes objects' headers, a deque slot, the entry's cost. tracemalloc, 20,000 entries on
#: Python 3.11: 405 to 426 bytes beyond the two copies, for events of 1 to 10,000 bytes of data, ~452 since
#: `Outgoing.cost` (a review's measure); rounded up for the allocator's slack and other Python versions.
ENTRY_OVERHEAD = 512
#: A publish that asked for an ack also holds (its number, a callback) until the broker has it: 248 bytes measured.
ACK_OVERHEAD = 256

#: Called with None once the broker has the event, or with the error that tells the client why it never will.
Done = Callable[[tuple[ErrorCode, str] | None], None]


def entry_cost(item: Outgoing) -> int:
    """The memory `item` holds while in the outbox, acks aside."""
    event = item.event
    copies = 1 if event.data is NULL and event.context is NULL else JSON_COPIES
    cost = copies * len(item.part) + ENTRY_OVERHEAD
    if event.traceparent is None:
        return cost
    # Trace context is a third copy: strings of its own in the Event, besides its text in the part and the line.
    cost += sys.getsizeof(event.traceparent)
    return cost if event.tracestate is None else cost + sys.getsizeof(event.tracestate)


_cost = operator.attrgetter("cost")


class OutboxFull(Exception):
    pass


class Outbox:
    def __init__(
        self,
        backend: Backend,
        codec: Codec,
        topic: str,
        max_bytes: int,
        metrics: Metrics,
        *,
        tracing: Tracing | None = None,  # --tracing: a publish span per batch the broker accepted
    ) -> None:
        self._backend = backend
        self._tracing = tracing
        self._metrics = metrics
        self._codec = codec
        self._topic = topic
        # What the broker may have got without confirming it: not sent again where receivers could not drop a copy.
        self._not_resent: tuple[type[Exception], ...] = (
            () if codec.carries_ids else (PublishUnconfirmed, PublishTimeout)
        )
        self.max_bytes = max_bytes
        self._items: deque[Outgoing] = deque()
        # (number of the event, what to call once the broker has it), for the few publishes that asked for an ack
        self._on_sent: deque[tuple[int, Done]] = deque()
        self._taken = 0  # events that have left the outbox so far: the number of the one at its head
        # Events the broker accepted so far: the next batch's first is number `on_bus + 1` on the bus. A batch sent
        # again goes with the same numbers, an event never accepted gets none: receivers see a gap only for a loss.
        self.on_bus = 0
        self.bytes = 0
        # What run() awaits while the outbox is empty; put() resolves it. A bare future, not an asyncio.Event: its
        # wait() asks asyncio for the running loop, a getpid() system call per event on Python 3.11.
        self._wake: asyncio.Future[None] | None = None
        self._connected = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0  # events at the head in the broker write under way: it may have them, unconfirmed
        self._stopped = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def max_event_bytes(self) -> int:
        # What the codec wraps around a batch (its head, a signature) counts too: a message over the broker's limit
        # would be refused, and retried, forever.
        return self._backend.max_message_bytes - self._codec.overhead

    def put(self, item: Outgoing, on_sent: Done | None = None) -> None:
        """Queue an event; `on_sent` runs once the broker has accepted it, or has refused it for good.

        Raises:
            OutboxFull: no room; the caller tells the client.
        """
        if self._stopped:  # the daemon is stopping: refused at once (stop())
            if on_sent is not None:
                on_sent((ErrorCode.STOPPING, "not sent to the broker: syncar is stopping"))
            return
        cost = entry_cost(item)
        size = cost + (0 if on_sent is None else ACK_OVERHEAD)
        if self.bytes + size > self.max_bytes:
            raise OutboxFull(f"outbox holds {self.bytes} bytes, its limit is {self.max_bytes}")
        item.cost = cost  # what _take gives back, not worked out again
        if on_sent is not None:
            self._on_sent.append((self._taken + len(self._items), on_sent))
        if not self._items:
            self._idle.clear()
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
        self._items.append(item)
        self.bytes += size

    def set_connected(self, connected: bool) -> None:
        if connected:
            self._connected.set()
        else:
            self._connected.clear()

    def _batch(self) -> list[Outgoing]:
        """The events of the next broker write, from the head, within what one broker message takes and within
        MAX_BATCH_BYTES (but at least one event)."""
        limit = min(self.max_event_bytes, MAX_BATCH_BYTES)
        batch: list[Outgoing] = []
        size = 0
        for item in itertools.islice(self._items, MAX_BATCH_EVENTS):
            size += len(item.part) + 1
            if size > limit and batch:
                break
            batch.append(item)
        return batch

    async def run(self) -> None:
        """Drain forever, in order; a batch leaves the outbox only once the broker accepted it."""
        refused = Backoff(RETRY_DELAY, MAX_RETRY_DELAY)
        loop = asyncio.get_running_loop()
        # The batch in flight and its bodies, packed once: a retry resends the same messages, signed anew.
        batch: list[Outgoing] = []
        bodies: list[bytes] = []
        while True:
            if not self._items:
                self._idle.set()
                self._wake = loop.create_future()
                await self._wake
                continue
            await self._connected.wait()
            if not batch:
                batch = self._batch()
                bodies = self._codec.pack(batch, self.on_bus + 1)
            else:
                # A retry, maybe after a long outage: the same messages, signed anew (receivers judge a signature's
                # time against when the broker took the message).
                bodies = self._codec.refresh(bodies)
            started = time.time_ns() if self._tracing is not None else 0
            try:
                await self._publish(bodies, len(batch))
            except BackendClosed:
                return
            except self._not_resent as exc:
                refusals.warning(
                    "unconfirmed",
                    "%d events may or may not have reached the broker (%s); not sent "
                    "again: the codec carries no id for receivers to drop a copy",
                    len(batch),
                    exc,
                )
                self._metrics.dropped.labels(DropReason.UNCONFIRMED).inc(len(batch))
                self._take(batch)
                self._settle((ErrorCode.UNCONFIRMED, f"not confirmed by the broker, not sent again: {exc}"))
                batch = []
                continue
            except BackendUnavailable:
                # The backend noticed the loss before telling us; wait for it to say it is back.
                await asyncio.sleep(RETRY_DELAY)
                continue
            except MessageTooLarge as exc:
                # The broker's limit went down since these events were queued (a NATS server back with a smaller
                # max_payload): pack them again within it. An event over it on its own can never be sent.
                if len(batch) == 1:
                    self._refuse_head(str(exc))
                batch = []
                continue
            except Exception as exc:
                # Refused (permissions, a conflicting exchange...) or a library failing in a way nobody foresaw:
                # nothing we can fix, so ask again slowly; the task must not die with the events in it.
                delay = refused.next()
                refusals.warning(
                    "refused", "broker refused a publish of %d events, retrying in %.2fs: %s", len(batch), delay, exc
                )
                await asyncio.sleep(delay)
                continue
            refused.reset()
            self._sent(batch, len(bodies))
            if self._tracing is not None:
                self._tracing.published([item.event for item in batch], len(batch), started)
            batch = []

    async def _publish(self, bodies: list[bytes], events: int) -> None:
        """One broker write, of `events` events from the head; stop() meanwhile knows the broker may have them."""
        self._in_flight = events
        try:
            await self._backend.publish(self._topic, bodies)
        finally:
            self._in_flight = 0

    def _sent(self, batch: list[Outgoing], messages: int) -> None:
        """The broker has `batch`: take it out, count it, and tell the publishers who asked."""
        metrics = self._metrics
        metrics.sent.inc(len(batch))
        self.on_bus += len(batch)
        metrics.messages_sent.inc(messages)
        # Once per batch: its first event waited longest.
        metrics.publish_seconds.observe(time.monotonic() - batch[0].queued_at)
        self._take(batch)
        self._settle(None)

    def _take(self, batch: list[Outgoing]) -> None:
        """Take `batch`, the events at the head, out of the outbox."""
        if self._stopped:  # stop() took them all while the broker had the write, and told their publishers
            return
        items = self._items
        for _ in batch:
            items.popleft()
        self.bytes -= sum(map(_cost, batch))
        self._taken += len(batch)

    def _refuse_head(self, reason: str) -> None:
        """Give up on the event at the head: the broker will never take it."""
        if self._stopped:
            return
        item = self._items[0]
        self._take([item])
        self._metrics.dropped.labels(DropReason.TOO_LARGE).inc()
        log.error("dropped an event of %d bytes that the broker no longer takes: %s", len(item.part), reason)
        self._settle((ErrorCode.TOO_LARGE_FOR_BROKER, f"the broker no longer takes it: {reason}"))

    def _settle(self, error: tuple[ErrorCode, str] | None) -> None:
        """Tell the publishers who asked about the events that have left the outbox."""
        on_sent = self._on_sent
        while on_sent and on_sent[0][0] < self._taken:
            self.bytes -= ACK_OVERHEAD
            on_sent.popleft()[1](error)

    def stop(self) -> int:
        """The daemon is stopping and the broker did not take everything in time: give up on what is left, telling
        the publishers who asked (a publish queued from now on is refused at once). How many events were left.

        An event in a broker write still unconfirmed may have reached the broker: where receivers can drop a copy by
        its id it is `stopping` like the rest (its app may publish it again), else `unconfirmed`."""
        left = list(self._items)
        in_flight = left[: self._in_flight]
        if in_flight:
            code = ErrorCode.STOPPING if not self._not_resent else ErrorCode.UNCONFIRMED
            self._take(in_flight)
            self._settle((code, "syncar stopped before the broker confirmed it; it may or may not have reached it"))
        self._take(left[len(in_flight) :])
        self._settle((ErrorCode.STOPPING, "syncar stopped before the broker took it; it will not be sent"))
        self._stopped = True
        self._idle.set()
        return len(left)

    async def drain(self) -> bool:
        """Wait until everything queued has been accepted by the broker; True if it was."""
        await self._idle.wait()
        return not self._items
