"""Durable mode: a daemon whose app is away leaves the backlog on the broker once its replay buffer is full of
events the app has not had, and takes it again when the app is back, so the app's resume misses nothing."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends import amqp_subscription, nats_jetstream
from sidecar.backlog import Backlog
from sidecar.daemon import Daemon
from sidecar.metrics import Metrics
from sidecar.replay import Entry, ReplayBuffer
from tests.brokers import BrokerServer
from tests.conftest import Connect
from tests.utils import RawClient, metric, publish_frame, run_daemon, wait_for

REPLAY_EVENTS = 100
BACKLOG = 5 * REPLAY_EVENTS
ROUND = 10  # events published per round, acknowledged before the next: no broker message is over the buffer

BROKERS = ("redis", "rabbitmq", "nats")
PAD = "x" * 200  # in each event: its frame is about 300 bytes
#: A buffer that --replay-bytes fills first: about 30 of these events.
BY_BYTES = {"replay_events": 10_000, "replay_bytes": 12_000}
# broker, how long the app stays away once its daemon has paused, and the buffer. Away long enough, with the limits
# shortened below, for NATS's pull requests to expire, its watchdog to look and its ack wait to pass; on RabbitMQ,
# once the channel was closed under the held delivery, for two more HOLD_LIMITs in which it must not be again.
CASES = [
    pytest.param("redis", 0.0, {}, marks=pytest.mark.redis, id="redis"),
    pytest.param("redis", 0.0, BY_BYTES, marks=pytest.mark.redis, id="redis-replay-bytes"),
    pytest.param("rabbitmq", 0.0, {}, marks=pytest.mark.rabbitmq, id="rabbitmq"),
    pytest.param("rabbitmq", 2.0, {}, marks=pytest.mark.rabbitmq, id="rabbitmq-held-past-the-limit"),
    pytest.param("nats", 0.0, {}, marks=pytest.mark.nats, id="nats"),
    pytest.param("nats", 4.0, {}, marks=pytest.mark.nats, id="nats-past-the-watchdog-and-ack-wait"),
]


async def _app_away(sock: Path, instance_id: str, settings: dict[str, Any], connect: Connect) -> dict[str, Any]:
    """B's app connects once, so that B's queue (group, consumer) exists and the backlog waits in it, and leaves with
    B stopped: where it resumes from."""
    async with run_daemon(sock, instance_id=instance_id, **settings):
        app = await connect(sock, {"client_id": "app"})
        resume = {"epoch": app.welcome["epoch"], "seq": app.welcome["seq"]}
        await app.close()
    return resume


async def _publish(sock: Path, connect: Connect, numbers: range, pad: str = PAD) -> None:
    """Events numbered `numbers`, in rounds each acknowledged by the broker before the next."""
    publisher = await connect(sock, {"client_id": "publisher"})
    for first in range(numbers.start, numbers.stop, ROUND):
        for n in range(first, first + ROUND):
            await publisher.send(publish_frame(data={"n": n, "pad": pad}, id=f"e{n}", ack=True))
        for _ in range(ROUND):
            assert (await publisher.frame_of("ack"))["type"] == "ack"
    await publisher.close()  # the next round's publisher takes its client_id


async def _numbers(app: RawClient, count: int) -> list[int]:
    frames: list[dict[str, Any]] = []  # as RawClient.frame() reads them
    while len(frames) < count:
        frame = await app.frame()
        assert frame["type"] != "error", frame  # a resume_gap, say
        if frame["type"] == "event":
            frames.append(frame)
    return [frame["data"]["n"] for frame in frames]


def _said(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(("broker", "away", "buffer"), CASES)
async def test_a_restarted_daemon_leaves_the_backlog_on_the_broker_until_its_app_is_back(
    broker: str,
    away: float,
    buffer: dict[str, int],
    *,
    sock_dir: Path,
    connect: Connect,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B's app leaves, B restarts while A publishes five times what B's replay buffer holds; B reads until the buffer
    is full and stops; the app resumes and gets every event once, in order, with no resume_gap."""
    monkeypatch.setattr(amqp_subscription, "HOLD_LIMIT", 1.0)
    monkeypatch.setattr(nats_jetstream, "ACK_WAIT", 1.0)
    caplog.set_level(logging.INFO, "sidecar")
    caplog.set_level(logging.DEBUG, "backends")  # last: it sets the level of caplog's handler too
    server: BrokerServer = request.getfixturevalue(f"{broker}_server")
    key = f"backlog-{uuid.uuid4().hex}"
    settings = {"backend": server.uri, "key": key, "mode": "durable", "replay_events": REPLAY_EVENTS, **buffer}
    sock_a, sock_b = sock_dir / "a.sock", sock_dir / "b.sock"
    async with run_daemon(sock_a, instance_id=f"a-{key}", **settings):
        resume = await _app_away(sock_b, f"b-{key}", settings, connect)
        await _publish(sock_a, connect, range(BACKLOG))
        b: Daemon
        async with run_daemon(sock_b, instance_id=f"b-{key}", **settings) as b:
            await wait_for(lambda: metric(b.metrics, "syncar_backlog_paused") == 1, what="b paused")
            received = metric(b.metrics, "syncar_events_received_total")
            assert received == metric(b.metrics, "syncar_replay_events")  # none pushed out
            # Full: the next message (up to ROUND events) would not have fitted.
            if buffer:
                assert b.settings.replay_bytes / 2 < metric(b.metrics, "syncar_replay_bytes") <= b.settings.replay_bytes
            else:
                assert received > REPLAY_EVENTS - ROUND
            if broker == "rabbitmq" and away:
                await wait_for(lambda: _said(caplog, "has held a delivery") > 0, what="the channel closed under it")
            if away:
                await asyncio.sleep(away)  # the app stays away: the pause goes on this long
                assert metric(b.metrics, "syncar_events_received_total") == received
            app = await connect(sock_b, {"client_id": "app", "resume": resume})
            assert app.welcome["resumed"] is True
            assert await _numbers(app, BACKLOG) == list(range(BACKLOG))
            assert metric(b.metrics, "syncar_backlog_paused") == 0
            await _publish(sock_a, connect, range(BACKLOG, BACKLOG + ROUND))  # live events follow, once each
            assert await _numbers(app, ROUND) == list(range(BACKLOG, BACKLOG + ROUND))
            if away:  # what the broker took back and delivered again, dropped as the copies they are
                assert metric(b.metrics, "syncar_events_dropped_total", reason="duplicate") > 0
    assert _said(caplog, "leaving the rest of the backlog on the broker")
    assert _said(caplog, "taking the backlog from the broker again")
    if broker == "rabbitmq" and away:  # closed once, and not consumed again until the app was back
        assert _said(caplog, "has held a delivery") == 1
    if broker == "nats":  # its watchdog took the pause for no silence
        assert not _said(caplog, "no word from consumer")


@pytest.mark.parametrize("broker", [pytest.param(b, marks=getattr(pytest.mark, b)) for b in BROKERS])
async def test_a_paused_daemon_stops_at_once_and_leaves_what_it_held_to_the_next_run(
    broker: str, sock_dir: Path, connect: Connect, request: pytest.FixtureRequest
) -> None:
    """Stopping while paused neither waits for the held message's handler nor acknowledges it: the next run has it."""
    server: BrokerServer = request.getfixturevalue(f"{broker}_server")
    key = f"backlog-{uuid.uuid4().hex}"
    settings = {"backend": server.uri, "key": key, "mode": "durable", "replay_events": REPLAY_EVENTS}
    sock_a, sock_b = sock_dir / "a.sock", sock_dir / "b.sock"
    async with run_daemon(sock_a, instance_id=f"a-{key}", **settings):
        resume = await _app_away(sock_b, f"b-{key}", settings, connect)
        await _publish(sock_a, connect, range(BACKLOG))
        loop = asyncio.get_running_loop()
        async with run_daemon(sock_b, instance_id=f"b-{key}", **settings) as b:
            await wait_for(lambda: metric(b.metrics, "syncar_backlog_paused") == 1, what="b paused")
            received = int(metric(b.metrics, "syncar_events_received_total"))
            stopping = loop.time()
        # Not the RabbitMQ worker's drain timeout, nor NATS's or Redis's read timeouts: nothing waits for the handler.
        assert loop.time() - stopping < amqp_subscription.DRAIN_TIMEOUT
        async with run_daemon(sock_b, instance_id=f"b-{key}", **settings):
            app = await connect(sock_b, {"client_id": "app", "resume": resume})
            first = (await app.frame_of("event"))["data"]["n"]
            # What the stopped run held (and, on RabbitMQ, what it had handled without acknowledging) comes again;
            # what it had acknowledged into its replay buffer went with it.
            assert first <= received
            assert [first, *await _numbers(app, BACKLOG - first - 1)] == list(range(first, BACKLOG))


@pytest.mark.redis
@pytest.mark.parametrize("hello", [{"client_id": "tail"}, {"client_id": "tool", "subscribe": []}], ids=["tail", "deaf"])
async def test_an_app_that_comes_and_goes_at_once_does_not_end_the_pause(
    hello: dict[str, object], sock_dir: Path, connect: Connect, redis_server: BrokerServer
) -> None:
    """A `syncar tail`, or an app that dies after its hello, had none of what the buffer keeps for the app away: once
    it leaves, the daemon pauses at once again (before, all it kept was marked had, and it took a buffer more)."""
    key = f"backlog-{uuid.uuid4().hex}"
    settings = {"backend": redis_server.uri, "key": key, "mode": "durable", "replay_events": REPLAY_EVENTS}
    sock_a, sock_b = sock_dir / "a.sock", sock_dir / "b.sock"
    async with run_daemon(sock_a, instance_id=f"a-{key}", **settings):
        resume = await _app_away(sock_b, f"b-{key}", settings, connect)
        await _publish(sock_a, connect, range(REPLAY_EVENTS + ROUND))  # the buffer full, and one message more
        async with run_daemon(sock_b, instance_id=f"b-{key}", **settings) as b:
            await wait_for(lambda: metric(b.metrics, "syncar_backlog_paused") == 1, what="b paused")
            tool = await connect(sock_b, hello)  # it takes the held message, live: the oldest ROUND events go
            await tool.close()
            await wait_for(lambda: metric(b.metrics, "syncar_clients") == 0, what="the tool gone")
            await wait_for(lambda: metric(b.metrics, "syncar_events_received_total") == REPLAY_EVENTS + ROUND)
            await _publish(sock_a, connect, range(REPLAY_EVENTS + ROUND, BACKLOG))
            await wait_for(lambda: metric(b.metrics, "syncar_backlog_paused") == 1, what="b paused again")
            await asyncio.sleep(0.3)
            assert metric(b.metrics, "syncar_events_received_total") == REPLAY_EVENTS + ROUND
            # The app resumes: what the tool's visit pushed out is a gap, counted; the rest, held and on the broker,
            # comes in order.
            app = await connect(sock_b, {"client_id": "app", "resume": resume})
            gap = await app.frame_of("error")
            assert (gap["code"], gap["missed"], gap["first"], gap["last"]) == ("resume_gap", ROUND, 1, ROUND)
            assert await _numbers(app, BACKLOG - ROUND) == list(range(ROUND, BACKLOG))


@pytest.mark.redis
async def test_an_app_cut_while_catching_up_lets_the_pause_engage_again(
    sock_dir: Path, connect: Connect, redis_server: BrokerServer
) -> None:
    """An app that resumes but does not read is cut as `slow_client` once the buffer moves past it; it is gone, so the
    daemon pauses again at a full buffer (before, the cut app was never counted gone, and B read all the backlog)."""
    key = f"backlog-{uuid.uuid4().hex}"
    settings = {"backend": redis_server.uri, "key": key, "mode": "durable", "replay_events": REPLAY_EVENTS}
    sock_a, sock_b = sock_dir / "a.sock", sock_dir / "b.sock"
    async with run_daemon(sock_a, instance_id=f"a-{key}", **settings):
        resume = await _app_away(sock_b, f"b-{key}", settings, connect)
        await _publish(sock_a, connect, range(BACKLOG), pad=PAD * 20)  # the buffer holds 400 KB, the app's queue 64
        async with run_daemon(sock_b, instance_id=f"b-{key}", client_queue_bytes=65_536, **settings) as b:
            await wait_for(lambda: metric(b.metrics, "syncar_backlog_paused") == 1, what="b paused")
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.connect(str(sock_b))
            raw.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=raw, limit=8192)
            writer.write(orjson.dumps({"type": "hello", "client_id": "app", "resume": resume}) + b"\n")
            # It reads nothing: B reads the backlog for it, the buffer moves past what it was sent, and it is cut.
            await wait_for(
                lambda: metric(b.metrics, "syncar_client_disconnects_total", reason="slow_client") == 1, what="cut"
            )
            assert await asyncio.wait_for(reader.read(-1), 5.0)  # what it was sent, then the error; closed
            writer.close()
            await wait_for(lambda: metric(b.metrics, "syncar_clients") == 0, what="the app gone")
            await wait_for(lambda: metric(b.metrics, "syncar_backlog_paused") == 1, what="b paused again")
            received = metric(b.metrics, "syncar_events_received_total")
            await asyncio.sleep(0.3)
            assert metric(b.metrics, "syncar_events_received_total") == received < BACKLOG


@pytest.mark.redis
@pytest.mark.parametrize("replay_events", [REPLAY_EVENTS, 0])
async def test_a_message_larger_than_the_buffer_waits_for_an_app(
    replay_events: int, sock_dir: Path, connect: Connect, redis_server: BrokerServer
) -> None:
    """A broker message of more events than the whole buffer holds would push out its own first ones: with no app,
    B leaves it on the broker, and the app gets it live, whole (before, B took it, and the app got resume_gap). With
    `--replay-events 0` there is no buffer: B takes nothing while no app is connected."""
    key = f"backlog-{uuid.uuid4().hex}"
    settings = {"backend": redis_server.uri, "key": key, "mode": "durable", "replay_events": replay_events}
    sock_a, sock_b = sock_dir / "a.sock", sock_dir / "b.sock"
    count = 3 * REPLAY_EVENTS
    async with run_daemon(sock_a, instance_id=f"a-{key}", **settings):
        resume = await _app_away(sock_b, f"b-{key}", settings, connect)
        publisher = await connect(sock_a, {"client_id": "publisher"})
        frames = (orjson.dumps(publish_frame(data={"n": n}, id=f"e{n}", ack=True)) + b"\n" for n in range(count))
        await publisher.send(b"".join(frames))  # in one read: the outbox sends them in few messages
        for _ in range(count):
            await publisher.frame_of("ack")
        async with run_daemon(sock_b, instance_id=f"b-{key}", **settings) as b:
            await wait_for(lambda: metric(b.metrics, "syncar_backlog_paused") == 1, what="b paused")
            assert metric(b.metrics, "syncar_events_received_total") == 0
            app = await connect(sock_b, {"client_id": "app", "resume": resume})
            assert app.welcome["resumed"] is True
            assert await _numbers(app, count) == list(range(count))


def _buffer(seqs: range, max_events: int = 10) -> ReplayBuffer:
    replay = ReplayBuffer(max_events, 1 << 20)
    for seq in seqs:
        replay.append(Entry(seq, "messages", "created", None, b'"a"', b"x" * 10, True))
    return replay


def test_the_delivered_mark_moves_only_as_far_as_what_the_apps_that_left_had() -> None:
    """No broker: the rules, case by case. An app has had every event after `since` up to `had`."""
    replay = _buffer(range(1, 11))
    backlog = Backlog(replay, Metrics("redis", "syncar"))
    backlog.app_joined("tail", since=10)  # no resume: it had nothing old
    backlog.app_left("tail", had=10)
    assert replay.delivered == 0 and not replay.room(1, 10)
    backlog.app_joined("app", since=0)  # resumed from the start, cut (or gone) at its cursor, 4
    backlog.app_left("app", had=4)
    assert replay.delivered == 4 and replay.room(4, 40) and not replay.room(5, 50)
    backlog.app_left("app", had=10)  # cut, then closed: once
    assert replay.delivered == 4
    backlog.app_joined("app", since=4)
    backlog.app_joined("other", since=2)
    backlog.app_left("app", had=10)  # caught up; "other" still here, catching up
    assert replay.delivered == 4
    backlog.app_left("other", had=7)
    assert replay.delivered == 7  # what both had
    backlog.app_joined("late", since=9)  # live from 9: 8 and 9 no app had
    backlog.app_left("late", had=10)
    assert replay.delivered == 7
    backlog.app_joined("app", since=7)
    backlog.app_left("app", had=3)  # never back
    assert replay.delivered == 7


def test_a_message_over_the_whole_buffer_never_has_room() -> None:
    replay = _buffer(range(1, 11))
    replay.mark_delivered(10)
    assert replay.room(10, 100) and not replay.room(11, 110)
    assert not ReplayBuffer(10, 100).room(1, 101)
    assert not ReplayBuffer(0, 1 << 20).room(1, 10)  # --replay-events 0: no buffer, so nothing to keep it in
