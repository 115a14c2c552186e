"""Per-origin sequence numbers: what the codec carries, what the outbox numbers, what the tracker and the relay make
of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from backends.base import BackendState, BackendUnavailable, Message
from sidecar.codec import FeathersSyncCodec, SyncarCodec
from sidecar.errors import CodecError
from sidecar.gaps import GapReason, GapTracker
from sidecar.metrics import Metrics
from sidecar.outbox import Outbox
from sidecar.relay import Relay
from sidecar.replay import ReplayBuffer
from sidecar.signing import SignedCodec, Signer
from tests.unit.fakes import FakeBackend, FakeSubscriber, outgoing
from tests.utils import metric, wait_for

KEY = b"key-0123456789abcdef"


def test_a_syncar_batch_carries_its_run_and_first_seq_and_an_older_one_without_them_is_taken() -> None:
    sender = SyncarCodec("a")
    [body] = sender.pack([outgoing(1), outgoing(2)], 41)
    batch = SyncarCodec("b").unpack(body)
    assert (batch.origin, batch.run, batch.seq, len(batch.events)) == ("a", sender.run, 41, 2)
    assert sender.echoed(body) == 2  # the seq in the tail does not hide our own batch from us
    assert len(body) <= sender.overhead + len(outgoing(1).part) + len(outgoing(2).part) + 1
    old = b'{"v":1,"origin":"x","events":[{"id":"1","time":1,"event":"e","path":"p"}]}'
    assert (SyncarCodec("b").unpack(old).run, SyncarCodec("b").unpack(old).seq) == (None, None)
    for bad in (b'"seq":0', b'"seq":-3', b'"seq":"7"', b'"seq":1.5'):
        with pytest.raises(CodecError, match="positive integer") as info:
            SyncarCodec("b").unpack(old[:-1] + b"," + bad + b"}")
        assert info.value.reason == "malformed"


def test_feathers_sync_carries_no_sequence() -> None:
    [body] = FeathersSyncCodec("a").pack([outgoing(1)], 9)
    assert b"seq" not in body and b"run" not in body
    batch = FeathersSyncCodec("b").unpack(body)
    assert (batch.run, batch.seq) == (None, None)


def test_the_signature_covers_the_seq() -> None:
    signed = SignedCodec(SyncarCodec("a"), Signer([KEY], 60)).pack([outgoing(1)], 5)[0]
    receiver = SignedCodec(SyncarCodec("b"), Signer([KEY], 60))
    with pytest.raises(CodecError) as info:
        receiver.unpack(signed.replace(b'"seq":5}', b'"seq":6}'))
    assert info.value.reason == "bad_signature"
    assert receiver.unpack(signed).seq == 5


def test_the_tracker_counts_jumps_not_copies_and_notices_a_new_run() -> None:
    tracker = GapTracker(max_origins=2)
    assert tracker.heard("a", "r1", 7, 3) is None  # first heard: what came before is not ours to miss
    assert tracker.heard("a", "r1", 10, 2) is None  # 10-11 follow 7-9
    assert tracker.heard("a", "r1", 10, 2) is None  # a copy (redelivery, a resend)
    assert tracker.heard("a", "r1", 5, 1) is None  # older still: a copy too
    gap = tracker.heard("a", "r1", 20, 5)
    assert gap is not None and (gap.first, gap.last, gap.missed, gap.reason) == (12, 19, 8, GapReason.LOST)
    assert tracker.heard("a", "r1", 25, 1) is None
    assert tracker.heard("a", "r2", 1, 4) is None  # a new run, heard from its first event
    gap = tracker.heard("a", "r3", 6, 1)
    assert gap is not None and (gap.first, gap.last, gap.run, gap.reason) == (1, 5, "r3", GapReason.RESTART)
    # Two runs at once (two daemons given one instance id): each keeps its numbers, no false restart.
    assert tracker.heard("a", "r2", 5, 1) is None
    assert tracker.heard("a", "r3", 7, 1) is None
    # Bounded: the least recently heard run is forgotten, and is new when heard again.
    tracker.heard("b", "r", 1, 1)
    tracker.heard("c", "r", 1, 1)
    assert len(tracker) == 2
    assert tracker.heard("a", "r3", 100, 1) is None


@pytest.fixture
def tracker() -> GapTracker:
    return GapTracker()


@pytest.fixture
async def relay(tracker: GapTracker) -> AsyncIterator[tuple[Relay, Metrics]]:
    backend, metrics = FakeBackend(), Metrics("fake", "syncar")
    codec = SyncarCodec("here")
    outbox = Outbox(backend, codec, "topic", 1 << 20, metrics)
    relay = Relay(
        "here",
        backend_name="fake",
        codec=codec,
        outbox=outbox,
        replay=ReplayBuffer(100, 1 << 20),
        metrics=metrics,
        id_key=b"key",
        gaps=tracker,
    )
    relay.on_backend_state(BackendState.CONNECTED)
    yield relay, metrics


async def test_every_client_is_told_of_a_gap_once_and_it_is_counted(relay: tuple[Relay, Metrics]) -> None:
    relay_, metrics = relay
    wanting = FakeSubscriber("w")
    other = FakeSubscriber("o", wants=lambda path, event: path == "users")
    for client in (wanting, other):
        client.id_scope = relay_.scope_of(client.client_id)
        relay_.join(client, None)
    there = SyncarCodec("there")
    for seq, data in ((1, 1), (2, 2), (2, 2), (6, 6), (7, 7)):  # 3-5 never came; 2 came twice
        await relay_.on_message(Message(there.pack([outgoing(data, event_id=str(data))], seq)[0]))
    assert wanting.data() == [1, 2, 6, 7]
    expected = {
        "type": "gap",
        "origin": "there",
        "missed": 3,
        "first": 3,
        "last": 5,
        "run": there.run,
        "reason": "lost",
    }
    assert wanting.decoded("gap") == other.decoded("gap") == [expected]
    assert metric(metrics, "syncar_events_missed_total") == 3


async def test_a_batch_sent_again_keeps_its_numbers_and_the_next_goes_on_from_them() -> None:
    backend, metrics = FakeBackend(), Metrics("fake", "syncar")
    outbox = Outbox(backend, SyncarCodec("here"), "topic", 1 << 20, metrics)
    backend.failures = [BackendUnavailable("fake: down")]
    for n in range(3):
        outbox.put(outgoing(n))
    outbox.set_connected(True)
    task = asyncio.create_task(outbox.run())
    try:
        await wait_for(lambda: len(outbox) == 0, what="the first batch")
        outbox.put(outgoing(3))
        await wait_for(lambda: len(backend.published) == 2, what="the second batch")
    finally:
        task.cancel()
    assert [orjson.loads(call[0])["seq"] for call in backend.published] == [1, 4]
    assert backend.attempts == 3


def test_an_announced_seq_not_heard_is_a_gap_once_and_counts_as_heard() -> None:
    tracker = GapTracker()
    tracker.heard("a", "r1", 1, 10)
    assert tracker.announced("a", "r1", 10, since=0) is None  # all heard
    gap = tracker.announced("a", "r1", 15, since=0)  # 11-15 never came, nor anything after them
    assert gap is not None and (gap.first, gap.last, gap.reason) == (11, 15, GapReason.LOST)
    assert tracker.announced("a", "r1", 15, since=0) is None  # told once
    assert tracker.heard("a", "r1", 11, 5) is None  # 11-15 late after all: no gap (the relay still delivers them)
    gap = tracker.heard("a", "r1", 18, 1)  # a batch reveals only what is beyond
    assert gap is not None and (gap.first, gap.last) == (16, 17)
    assert tracker.announced("a", "r1", 18, since=0) is None  # and the other way round: revealed by a batch first
    # An origin never heard: what it sent after the fleet first heard of its run (`since`) is ours to miss.
    gap = tracker.announced("b", "r1", 30, since=20)
    assert gap is not None and (gap.first, gap.last, gap.reason) == (21, 30, GapReason.LOST)
    assert tracker.heard("b", "r1", 31, 1) is None
    assert tracker.announced("c", "r1", 20, since=20) is None
    assert tracker.heard("c", "r1", 21, 1) is None
    # A new run of an origin heard before: as a batch after it would say, its first events were missed.
    gap = tracker.announced("a", "r2", 4, since=4)
    assert gap is not None and (gap.first, gap.last, gap.reason) == (1, 4, GapReason.RESTART)


async def test_a_batch_that_arrives_after_its_gap_was_told_is_still_delivered(
    relay: tuple[Relay, Metrics], tracker: GapTracker
) -> None:
    relay_, metrics = relay
    app = FakeSubscriber("w")
    app.id_scope = relay_.scope_of(app.client_id)
    relay_.join(app, None)
    there = SyncarCodec("there")
    await relay_.on_message(Message(there.pack([outgoing(1, event_id="1")], 1)[0]))
    gap = tracker.announced("there", there.run, 3, since=0)  # the fleet's settling of an announcement of seq 3
    assert gap is not None
    relay_.tell_gap(gap)
    for seq in (2, 3, 4):
        await relay_.on_message(Message(there.pack([outgoing(seq, event_id=str(seq))], seq)[0]))
    assert app.data() == [1, 2, 3, 4]
    assert [(g["first"], g["last"]) for g in app.decoded("gap")] == [(2, 3)]
    assert metric(metrics, "syncar_events_missed_total") == 2
