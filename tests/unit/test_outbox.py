"""The outbox on a fake backend: batching, retries, the order of acks, what is not sent again, the bounds."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest

from backends.base import BackendClosed, BackendUnavailable, MessageTooLarge, PublishUnconfirmed
from sidecar.codec import NULL, Codec, FeathersSyncCodec, Outgoing, SyncarCodec, encode
from sidecar.metrics import DropReason, Metrics
from sidecar.outbox import (
    ENTRY_OVERHEAD,
    JSON_COPIES,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    Outbox,
    OutboxFull,
    entry_cost,
)
from sidecar.protocol import ErrorCode
from tests.unit.fakes import FakeBackend, outgoing
from tests.utils import DROPPED, metric, wait_for

Start = Callable[[Outbox], None]
Answers = list[tuple[int, tuple[ErrorCode, str] | None]]


def make(backend: FakeBackend, codec: Codec | None = None, max_bytes: int = 1 << 20) -> tuple[Outbox, Metrics]:
    metrics = Metrics("fake", "syncar")
    return Outbox(backend, codec or SyncarCodec("here"), "topic", max_bytes, metrics), metrics


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """`start(outbox)`: its task runs, the broker connected, until the test ends."""
    tasks: list[asyncio.Task[None]] = []

    def run(outbox: Outbox) -> None:
        outbox.set_connected(True)
        tasks.append(asyncio.create_task(outbox.run()))

    yield run
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def drained(outbox: Outbox) -> bool:
    async with asyncio.timeout(5):
        return await outbox.drain()


def answer(answers: Answers, n: int) -> Callable[[tuple[ErrorCode, str] | None], None]:
    return lambda error: answers.append((n, error))


async def test_an_idle_outbox_sends_at_once_and_batches_what_queues_during_a_write(start: Start) -> None:
    backend = FakeBackend()
    outbox, metrics = make(backend)
    backend.held.clear()
    outbox.put(outgoing(1))
    start(outbox)
    await wait_for(lambda: backend.attempts == 1, what="the first write")  # in flight, alone: no timer delay
    for n in range(2, 7):
        outbox.put(outgoing(n))
    backend.held.set()
    assert await drained(outbox)
    assert backend.sent_data() == [[1], [2, 3, 4, 5, 6]]
    assert metric(metrics, "syncar_events_sent_total") == 6
    assert metric(metrics, "syncar_broker_messages_sent_total") == 2
    assert len(outbox) == 0 and outbox.bytes == 0


async def test_a_batch_stays_within_the_brokers_message_size_and_the_event_count(start: Start) -> None:
    codec = SyncarCodec("here")
    event_bytes = len(outgoing(0, size=100).part) + 1
    backend = FakeBackend(max_message_bytes=codec.overhead + 2 * event_bytes + 10)  # two events a message
    outbox, _ = make(backend, codec)
    for n in range(5):
        outbox.put(outgoing(n, size=100))
    start(outbox)
    assert await drained(outbox)
    assert [[event["n"] for event in batch] for batch in backend.sent_data()] == [[0, 1], [2, 3], [4]]

    many = FakeBackend()
    outbox, _ = make(many)
    for n in range(MAX_BATCH_EVENTS + 1):
        outbox.put(outgoing(n))
    start(outbox)
    assert await drained(outbox)
    assert [len(batch) for batch in many.sent_data()] == [MAX_BATCH_EVENTS, 1]


async def test_a_batch_stays_within_max_batch_bytes_and_a_larger_event_goes_alone(start: Start) -> None:
    """On a broker that takes 8 MiB a message, 4 KiB events go MAX_BATCH_BYTES at a time, not 1,024 (4 MiB)."""
    backend = FakeBackend()
    outbox, _ = make(backend, max_bytes=64 << 20)
    events = 600
    for n in range(events):
        outbox.put(outgoing(n, size=4096))
    outbox.put(outgoing("big", size=2 * MAX_BATCH_BYTES))
    start(outbox)
    assert await drained(outbox)
    sizes = [sum(map(len, bodies)) for bodies in backend.published]
    assert len(sizes) > 2 and all(size <= MAX_BATCH_BYTES + 4096 for size in sizes[:-1]), sizes
    assert [event["n"] for event in backend.sent_data()[-1]] == ["big"]
    assert sum(len(batch) for batch in backend.sent_data()) == events + 1


async def test_a_failed_write_is_retried_in_order_and_the_events_stay_until_accepted(start: Start) -> None:
    backend = FakeBackend()
    backend.failures = [BackendUnavailable("fake: down"), RuntimeError("refused, for now")]
    backend.held.clear()
    outbox, _ = make(backend)
    answers: Answers = []
    for n in range(3):
        outbox.put(outgoing(n), answer(answers, n))
    start(outbox)
    await wait_for(lambda: backend.attempts == 1, what="the first write")
    backend.held.set()
    await wait_for(lambda: backend.attempts == 3, what="two retries")
    assert await drained(outbox)
    assert backend.sent_data() == [[0, 1, 2]]  # the same batch, once accepted
    assert answers == [(0, None), (1, None), (2, None)]


async def test_acks_come_in_publish_order_once_the_broker_has_each_event(start: Start) -> None:
    backend = FakeBackend()
    backend.held.clear()
    outbox, _ = make(backend)
    acked: list[tuple[int, int]] = []  # (event, messages the broker had accepted when its ack came)

    def ack(n: int) -> Callable[[tuple[ErrorCode, str] | None], None]:
        return lambda error: acked.append((n, len(backend.published) if error is None else -1))

    outbox.put(outgoing(0), ack(0))
    start(outbox)
    await wait_for(lambda: backend.attempts == 1, what="the first write")
    outbox.put(outgoing(1))  # no ack asked
    outbox.put(outgoing(2), ack(2))
    outbox.put(outgoing(3), ack(3))
    backend.failures = [BackendUnavailable("fake: down")]  # the first write fails: no ack until it is sent again
    backend.held.set()
    assert await drained(outbox)
    assert acked == [(0, 1), (2, 2), (3, 2)]
    assert backend.sent_data() == [[0], [1, 2, 3]]


async def test_an_unconfirmed_batch_is_sent_again_only_when_receivers_can_drop_the_copy(start: Start) -> None:
    resent = FakeBackend()
    resent.failures = [PublishUnconfirmed("fake: lost before the confirm")]
    outbox, _ = make(resent)
    answers: Answers = []
    outbox.put(outgoing(0), answer(answers, 0))
    start(outbox)
    assert await drained(outbox)
    assert resent.sent_data() == [[0]] and answers == [(0, None)]

    once = FakeBackend()
    once.failures = [PublishUnconfirmed("fake: lost before the confirm")]
    outbox, metrics = make(once, FeathersSyncCodec("here"))
    answers = []
    outbox.put(outgoing(1), answer(answers, 1))
    outbox.put(outgoing(2))
    start(outbox)
    assert await drained(outbox)
    assert once.attempts == 1 and once.published == []
    assert metric(metrics, DROPPED, reason=DropReason.UNCONFIRMED) == 2
    assert answers == [
        (1, (ErrorCode.UNCONFIRMED, "not confirmed by the broker, not sent again: fake: lost before the confirm"))
    ]


async def test_a_batch_over_a_lowered_limit_is_repacked_and_an_event_over_it_alone_dropped(start: Start) -> None:
    codec = SyncarCodec("here")
    one_event = codec.overhead + len(outgoing(0).part) + 1
    backend = FakeBackend(max_message_bytes=2 * one_event)
    backend.held.clear()
    outbox, metrics = make(backend, codec)
    answers: Answers = []
    outbox.put(outgoing(0), answer(answers, 0))
    outbox.put(outgoing(1), answer(answers, 1))
    start(outbox)
    await wait_for(lambda: backend.attempts == 1, what="the first write")  # both events, in one message
    # The broker came back with a smaller limit (a NATS server's max_payload): the batch is refused, packed again
    # within the new limit, and the head, refused on its own too, is given up.
    backend.max_message_bytes = one_event
    backend.failures = [MessageTooLarge("fake: over the limit"), MessageTooLarge("fake: over the limit")]
    backend.held.set()
    assert await drained(outbox)
    assert backend.attempts == 3
    assert answers == [
        (0, (ErrorCode.TOO_LARGE_FOR_BROKER, "the broker no longer takes it: fake: over the limit")),
        (1, None),
    ]
    assert backend.sent_data() == [[1]]
    assert metric(metrics, DROPPED, reason=DropReason.TOO_LARGE) == 1


async def test_a_full_outbox_refuses_and_counts_memory_not_payload() -> None:
    item = outgoing(0)
    max_bytes = entry_cost(item) * 3 // 2  # an entry costs its JSON twice plus 512 bytes: room for one, not two
    assert max_bytes > 2 * len(item.part)
    outbox, _ = make(FakeBackend(), max_bytes=max_bytes)
    outbox.put(item)
    with pytest.raises(OutboxFull, match="outbox holds"):
        outbox.put(outgoing(1))
    assert len(outbox) == 1


async def test_a_closed_backend_ends_the_task() -> None:
    backend = FakeBackend()
    backend.failures = [BackendClosed("fake: closed")]
    outbox, _ = make(backend)
    outbox.put(outgoing(0))
    outbox.set_connected(True)
    async with asyncio.timeout(5):
        await outbox.run()
    assert len(outbox) == 1  # not taken out: nothing was sent


def test_an_entry_with_trace_context_counts_its_strings_too() -> None:
    """The Event's traceparent and tracestate are strings of their own, besides their text in the part and the line
    (the two JSON copies): the outbox counts them, and counts nothing more for an event without them."""
    plain = outgoing(1)
    traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    event = msgspec.structs.replace(plain.event, traceparent=traceparent, tracestate="k=v")
    traced = Outgoing(event, encode(event), 0.0)
    strings = sys.getsizeof(event.traceparent) + sys.getsizeof(event.tracestate)
    assert entry_cost(traced) == entry_cost(plain) + JSON_COPIES * (len(traced.part) - len(plain.part)) + strings
    assert entry_cost(plain) == JSON_COPIES * len(plain.part) + ENTRY_OVERHEAD


def test_an_entry_that_let_go_of_the_apps_read_counts_its_json_once() -> None:
    """With a codec that packs parts alone, the relay lets go of an event's `data` and `context` (views into the app's
    read): it holds its JSON once, in its part, and the outbox takes as many more before it is full."""
    kept = outgoing(1, size=1000)
    event = msgspec.structs.replace(kept.event, data=NULL, context=NULL)
    let_go = Outgoing(event, kept.part, 0.0)
    assert entry_cost(let_go) == len(kept.part) + ENTRY_OVERHEAD
    assert entry_cost(kept) == JSON_COPIES * len(kept.part) + ENTRY_OVERHEAD
