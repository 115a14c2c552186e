"""The last events of a run that nothing more is heard of: no later batch reveals them, the publisher's announcements
do (sidecar/fleet.py), and on RabbitMQ, where an announcement can overtake the events before it, the mark the
publisher puts on the key with each. A receiver cut off for the end of a burst is told exactly what it missed, within
a bounded time, whether the publisher goes quiet or stops; a receiver held back behind another origin's thousands of
messages while the announcements say more than it has is told nothing; a clean run tells nothing; in durable mode a
lag is a backlog."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from backends.base import Mode
from sidecar.daemon import Daemon
from sidecar.fleet import peers_topic
from tests.brokers import BrokerServer
from tests.conftest import Connect
from tests.contract.conftest import Setup, setups
from tests.contract.raw import raw_publish, raw_subscriber
from tests.contract.test_gaps import MISSED, Collector, collect, frames, via
from tests.faults.proxy import TcpProxy
from tests.utils import metric, run_daemon, wait_for

REAL_BROKERS_ONLY = True  # a receiver's link is cut, the announcements are read with a plain client

INTERVAL = 0.5  # seconds between announcements
#: How soon after the receiver is back its app must be told: about two intervals, with room for a loaded machine.
BOUND = 20 * INTERVAL
HEAD, TAIL = 200, 50  # events of the burst the receiver gets, then those it misses
BURST = 4000  # messages of another origin ahead of a publisher's events in a receiver's queue
BEHIND = 0.2  # seconds the broker's bytes take to reach that receiver
TIMEOUT = 30.0

broadcast = setups(lambda s: s.codec == "syncar" and s.mode is Mode.BROADCAST)
durable = setups(lambda s: s.mode is Mode.DURABLE)


def heard_since(daemon: Daemon, instance: str, since: float) -> bool:
    """Whether `daemon` heard an announcement of `instance` after `since` (time.monotonic())."""
    rows: list[dict[str, Any]] = daemon.fleet.describe()["peers"]  # type: ignore[assignment]
    ages = [row["heard_seconds_ago"] for row in rows if row["instance"] == instance]
    return bool(ages) and time.monotonic() - ages[0] > since


def peer_row(daemon: Daemon, instance: str) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = daemon.fleet.describe()["peers"]  # type: ignore[assignment]
    return next((row for row in rows if row["instance"] == instance), None)


def lag(daemon: Daemon, instance: str) -> int | None:
    row = peer_row(daemon, instance)
    return None if row is None else row["lag"]


async def burst(broker: BrokerServer, key: str, count: int) -> None:
    """`count` messages on `key` from an origin of no daemon, each a batch of one event on the path `burst`, on one
    channel with confirms: the broker holds them all once this returns."""
    import aio_pika

    run, now = uuid.uuid4().hex[:16], time.time()
    async with await aio_pika.connect(broker.uri) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(key, aio_pika.ExchangeType.FANOUT, durable=False)
        for seq in range(1, count + 1):
            body = b'{"v":1,"origin":"burst","run":"%s","events":[{"id":"b%d","time":%f,"event":"tick","path":"burst",'
            body += b'"data":%d}],"seq":%d}'
            await exchange.publish(aio_pika.Message(body % (run.encode(), seq, now, seq, seq)), routing_key="")


def assert_no_gap(app: Collector, daemon: Daemon) -> None:
    assert app.gaps == []
    assert metric(daemon.metrics, MISSED) == 0


@contextlib.asynccontextmanager
async def announcements(broker: BrokerServer, key: str) -> AsyncIterator[asyncio.Queue[bytes]]:
    async with raw_subscriber(broker, peers_topic(key)) as queue:
        yield queue


def unsigned(body: bytes) -> bytes:
    """`body` without the signature line that `--signing-key-file` puts before it."""
    return body.partition(b"\n")[2] if body.startswith(b"syncar-sig") else body


async def next_of(queue: asyncio.Queue[bytes], instance: str, count: int, seq: int | None = None) -> None:
    """Wait for `count` more announcements of `instance` (of `seq`, if given) on the bus."""
    async with asyncio.timeout(TIMEOUT):
        while count:
            announcement = orjson.loads(unsigned(await queue.get()))
            if announcement["instance"] == instance and seq in (None, announcement["seq"]):
                count -= 1


@broadcast
@pytest.mark.parametrize("end", ["quiet", "leaving"])
# nats-py's leak while the proxy refuses its reconnects (tests/contract/test_gaps.py says where), not this test's.
@pytest.mark.filterwarnings("ignore:unclosed <StreamWriter:ResourceWarning")
async def test_a_receiver_that_missed_the_end_of_a_burst_is_told(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path, connect: Connect, end: str
) -> None:
    """A sends a burst; B's link is cut for its last TAIL events; A then sends nothing more (quiet: the next of its
    announcements tells B) or stops (leaving: its last announcement tells B, an interval later). A announces only at
    its start and stop in that case, so that nothing else can tell; C keeps the key busy, so that B, on NATS (which
    does not bring a daemon its own announcements), hears a peer and does not take its subscription for lost."""
    assert broker is not None
    proxy = await TcpProxy.start(broker.port)
    key = f"trailing-{uuid.uuid4().hex}"
    a_id, b_id, c_id = (f"{name}-{key[9:17]}" for name in "abc")
    common: dict[str, Any] = {"codec": "syncar", "key": key, "mode": setup.mode}
    a_interval = INTERVAL if end == "quiet" else 3600.0
    try:
        async with (
            run_daemon(sock_dir / "c.sock", instance_id=c_id, backend=broker.uri, announce_interval=INTERVAL, **common),
            run_daemon(
                sock_dir / "b.sock",
                instance_id=b_id,
                backend=via(broker, proxy.port),
                announce_interval=INTERVAL,
                **common,
            ) as b,
            collect(connect, sock_dir / "b.sock", ["stream"]) as app,
            contextlib.AsyncExitStack() as running_a,
        ):
            a = await running_a.enter_async_context(
                run_daemon(
                    sock_dir / "a.sock", instance_id=a_id, backend=broker.uri, announce_interval=a_interval, **common
                )
            )
            publisher = await connect(sock_dir / "a.sock", {"subscribe": ["control"]})
            await publisher.send(frames(0, HEAD))
            await wait_for(lambda: len(app.events) == HEAD, TIMEOUT, "the burst's head")
            proxy.cut()
            await wait_for(lambda: "down" in app.broker, TIMEOUT, "the receiver to see its link down")
            await publisher.send(frames(HEAD, HEAD + TAIL))
            sent = "syncar_events_sent_total"
            await wait_for(lambda: metric(a.metrics, sent) == HEAD + TAIL, TIMEOUT, "the broker to have the tail")
            proxy.restore()
            await wait_for(lambda: app.broker[-1:] == ["up"], TIMEOUT, "the receiver to be back")
            back = time.monotonic()
            if end == "leaving":
                await wait_for(lambda: heard_since(b, c_id, back), TIMEOUT, "the receiver to hear announcements")
                await running_a.aclose()  # A stops: its last announcement says so, with its seq
            await wait_for(lambda: bool(app.gaps), BOUND, "the gap")
            told = time.monotonic() - back
            lost = HEAD + TAIL - len(app.events)
            print(f"\n{broker.name}/{end}: {lost} of {HEAD + TAIL} lost, told in {told:.2f}s: {app.gaps}")
            assert lost == TAIL and app.events == list(range(HEAD))
            assert [(g["origin"], g["first"], g["last"], g["reason"]) for g in app.gaps] == [
                (a_id, HEAD + 1, HEAD + TAIL, "lost")
            ]
            assert app.missed == metric(b.metrics, MISSED) == TAIL
            if end == "quiet":  # a later batch reveals nothing more: told once
                await publisher.send(frames(HEAD + TAIL, HEAD + TAIL + 1))
                await wait_for(lambda: app.events[-1:] == [HEAD + TAIL], TIMEOUT, "the next event")
                assert app.missed == metric(b.metrics, MISSED) == TAIL and len(app.gaps) == 1
    finally:
        await proxy.close()


@setups(lambda s: s.broker == "rabbitmq" and s.codec == "syncar" and s.mode is Mode.BROADCAST)
async def test_a_receiver_behind_another_origins_burst_is_told_nothing_false(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path, connect: Connect
) -> None:
    """The review's case: B's queue holds BURST messages of another origin when A publishes TAIL events and goes
    quiet. A's announcements reach B first, by a queue of their own, and say for interval after interval that B has
    none of those events; they come seconds later, and nothing is told (before the mark, the peer table told them
    lost at A's next announcement: the review saw 50 told missed that came 17 s later)."""
    assert broker is not None
    proxy = await TcpProxy.start(broker.port)
    # B takes at most a prefetch window (256 messages) per BEHIND: about 1,300 messages a second.
    proxy.reply_latency = BEHIND
    key = f"trailing-{uuid.uuid4().hex}"
    a_id, b_id = (f"{name}-{key[9:17]}" for name in "ab")
    common: dict[str, Any] = {"codec": "syncar", "key": key, "mode": setup.mode, "announce_interval": INTERVAL}
    try:
        async with (
            run_daemon(sock_dir / "b.sock", instance_id=b_id, backend=via(broker, proxy.port), **common) as b,
            collect(connect, sock_dir / "b.sock", ["stream"]) as app,
            run_daemon(sock_dir / "a.sock", instance_id=a_id, backend=broker.uri, **common) as a,
        ):
            await wait_for(lambda: peer_row(b, a_id) is not None, TIMEOUT, "B to hear A")
            await burst(broker, key, BURST)
            publisher = await connect(sock_dir / "a.sock", {"subscribe": ["control"]})
            await publisher.send(frames(0, TAIL))
            sent = "syncar_events_sent_total"
            await wait_for(lambda: metric(a.metrics, sent) == TAIL, TIMEOUT, "the broker to have A's events")
            # A's announcement of them overtook them, and the next one too: the peer table would settle the first.
            await wait_for(lambda: lag(b, a_id) == TAIL, TIMEOUT, "an announcement of A to overtake its events")
            overtaken = time.monotonic()
            await wait_for(lambda: heard_since(b, a_id, overtaken), TIMEOUT, "A's next announcement")
            assert_no_gap(app, b)
            assert lag(b, a_id) == TAIL, "B caught up within an interval: the burst held nothing back"
            behind = time.monotonic()
            await wait_for(lambda: len(app.events) == TAIL, TIMEOUT, "A's events, behind the burst")
            print(f"\nA's events came {time.monotonic() - behind:.1f}s after its second announcement of them")
            received = "syncar_events_received_total"
            assert metric(b.metrics, received) == BURST + TAIL
            # A's mark comes behind them, and more after it: heard, and still nothing told.
            later = time.monotonic() + INTERVAL
            await wait_for(lambda: heard_since(b, a_id, later), TIMEOUT, "two more intervals")
            assert app.events == list(range(TAIL))
            assert_no_gap(app, b)
    finally:
        await proxy.close()


@broadcast
async def test_a_clean_run_that_goes_quiet_then_stops_tells_no_gap(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path, connect: Connect
) -> None:
    assert broker is not None
    key = f"trailing-{uuid.uuid4().hex}"
    a_id, b_id = (f"{name}-{key[9:17]}" for name in "ab")
    common: dict[str, Any] = {"codec": "syncar", "key": key, "mode": setup.mode, "announce_interval": INTERVAL}
    async with (
        announcements(broker, key) as heard,
        run_daemon(sock_dir / "b.sock", instance_id=b_id, backend=broker.uri, **common) as b,
        collect(connect, sock_dir / "b.sock", ["stream"]) as app,
    ):
        async with run_daemon(sock_dir / "a.sock", instance_id=a_id, backend=broker.uri, **common):
            publisher = await connect(sock_dir / "a.sock", {"subscribe": ["control"]})
            await publisher.send(frames(0, HEAD + TAIL))
            await wait_for(lambda: len(app.events) == HEAD + TAIL, TIMEOUT, "the burst")
            # Quiet: B settles each of A's announcements at the next one.
            await next_of(heard, a_id, 4, seq=HEAD + TAIL)
        # Stopped: B settles A's last announcement one of its intervals later, at a sweep after one of its own.
        await wait_for(lambda: peer_row(b, a_id) is None, TIMEOUT, "B to hear A leave")
        await next_of(heard, b_id, 3)
        assert app.events == list(range(HEAD + TAIL))
        assert_no_gap(app, b)


@durable
async def test_a_durable_backlog_is_no_gap(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path, connect: Connect
) -> None:
    """B, with no app connected, leaves on the broker what its replay buffer cannot hold: A's announcements say more
    than B has read for many intervals, and that is no loss: the app that connects gets it all."""
    assert broker is not None
    key = f"trailing-{uuid.uuid4().hex}"
    a_id, b_id = (f"{name}-{key[9:17]}" for name in "ab")
    common: dict[str, Any] = {"codec": "syncar", "key": key, "mode": setup.mode, "announce_interval": INTERVAL}
    total = HEAD + TAIL
    async with (
        announcements(broker, key) as heard,
        run_daemon(sock_dir / "b.sock", instance_id=b_id, backend=broker.uri, replay_events=TAIL, **common) as b,
        run_daemon(sock_dir / "a.sock", instance_id=a_id, backend=broker.uri, **common),
    ):
        publisher = await connect(sock_dir / "a.sock", {"subscribe": ["control"]})
        await publisher.send(frames(0, total))
        await wait_for(lambda: metric(b.metrics, "syncar_backlog_paused") == 1, TIMEOUT, "B to leave a backlog")
        await next_of(heard, a_id, 4, seq=total)
        row = peer_row(b, a_id)
        assert row is not None and row["lag"] > 0, row  # behind, and for four announcements
        assert metric(b.metrics, MISSED) == 0
        async with collect(connect, sock_dir / "b.sock", ["stream"]) as app:
            await wait_for(
                lambda: metric(b.metrics, "syncar_events_received_total") == total, TIMEOUT, "B to read the backlog"
            )
            assert_no_gap(app, b)


@broadcast
async def test_an_unverified_announcement_tells_no_gap(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path, tmp_path: Path
) -> None:
    """With signing, an announcement in A's name and run that is not signed claims events never heard: dropped, it
    settles nothing (accepted, A's next announcement would settle its seq as a gap)."""
    assert broker is not None
    keys = tmp_path / "keys"
    keys.write_text("a-signing-key-of-32-characters!!\n")
    key = f"trailing-{uuid.uuid4().hex}"
    a_id, b_id = (f"{name}-{key[9:17]}" for name in "ab")
    common: dict[str, Any] = {
        "codec": "syncar",
        "key": key,
        "mode": setup.mode,
        "announce_interval": INTERVAL,
        "backend": broker.uri,
        "signing_key_file": keys,
    }
    async with (
        run_daemon(sock_dir / "b.sock", instance_id=b_id, **common) as b,
        run_daemon(sock_dir / "a.sock", instance_id=a_id, **common) as a,
    ):
        await wait_for(lambda: peer_row(b, a_id) is not None, TIMEOUT, "B to hear A")
        forged = msgspec.json.encode(msgspec.structs.replace(a.fleet.me, seq=1000))
        for _ in range(2):
            await raw_publish(broker, peers_topic(key), forged)
        rejected = "syncar_announcements_rejected_total"
        await wait_for(lambda: metric(b.metrics, rejected, reason="unsigned") == 2, TIMEOUT, "both dropped")
        dropped = time.monotonic()
        await wait_for(lambda: heard_since(b, a_id, dropped), TIMEOUT, "A's next announcement")
        assert metric(b.metrics, MISSED) == 0


async def test_the_key_carries_marks_only_where_announcements_can_overtake(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path, connect: Connect, tmp_path: Path
) -> None:
    """What a publisher puts on the key, as a plain client there sees it: its events, and on RabbitMQ in broadcast
    mode with the syncar codec a mark of its seq with each announcement, behind them (signed as its batches are, and
    taken by a receiver that checks signatures); nothing more on another broker, in durable mode (events go
    elsewhere) or with the feathers-sync codec, whose apps listen on the key."""
    assert broker is not None
    key = f"trailing-{uuid.uuid4().hex}"
    a_id, b_id = (f"{name}-{key[9:17]}" for name in "ab")
    common: dict[str, Any] = {
        "codec": setup.codec,
        "key": key,
        "mode": setup.mode,
        "announce_interval": INTERVAL,
        "backend": broker.uri,
    }
    if setup.codec == "syncar":  # signing needs it
        common["signing_key_file"] = tmp_path / "keys"
        common["signing_key_file"].write_text("a-signing-key-of-32-characters!!\n")
    marks = broker.name == "rabbitmq" and setup.codec == "syncar" and setup.mode is Mode.BROADCAST
    seen: list[Any] = []
    async with (
        raw_subscriber(broker, key) as on_key,
        announcements(broker, key) as heard,
        run_daemon(sock_dir / "b.sock", instance_id=b_id, **common) as b,
        collect(connect, sock_dir / "b.sock", ["stream"]) as app,
        run_daemon(sock_dir / "a.sock", instance_id=a_id, **common) as a,
    ):
        publisher = await connect(sock_dir / "a.sock", {"subscribe": ["control"]})
        await publisher.send(frames(0, 3))
        await wait_for(lambda: len(app.events) == 3, TIMEOUT, "B to get A's events")
        await next_of(heard, a_id, 3, seq=3)

        def taken() -> list[Any]:
            while not on_key.empty():
                body = on_key.get_nowait()
                seen.append(orjson.loads(unsigned(body)))
            return [body for body in seen if isinstance(body, dict) and body.get("events") == []]

        if marks:
            await wait_for(lambda: len(taken()) >= 3, TIMEOUT, "a mark with each announcement")
            mark = {"v": 1, "origin": a_id, "run": a.fleet.me.run, "seq": 4, "events": []}
            assert all(body == mark for body in taken())
            assert seen.index(mark) > max(i for i, body in enumerate(seen) if body.get("events")), "ahead of events"
        else:
            assert taken() == []
        dropped = [
            s for f in b.metrics.registry.collect() for s in f.samples if s.name == "syncar_events_dropped_total"
        ]
        assert sum(s.value for s in dropped) == 0, dropped
        assert_no_gap(app, b)
