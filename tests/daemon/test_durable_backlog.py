"""Durable mode: a daemon whose app is away leaves the backlog on the broker once its replay buffer is full of
events the app has not had, and takes it again when the app is back, so the app's resume misses nothing."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest

from backends import amqp_subscription, nats_jetstream
from sidecar.daemon import Daemon
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


async def _publish(sock: Path, connect: Connect, numbers: range) -> None:
    """Events numbered `numbers`, in rounds each acknowledged by the broker before the next."""
    publisher = await connect(sock, {"client_id": "publisher"})
    for first in range(numbers.start, numbers.stop, ROUND):
        for n in range(first, first + ROUND):
            await publisher.send(publish_frame(data={"n": n, "pad": PAD}, id=f"e{n}", ack=True))
        for _ in range(ROUND):
            assert (await publisher.frame_of("ack"))["type"] == "ack"
    await publisher.close()  # the next round's publisher takes its client_id


async def _numbers(app: RawClient, count: int) -> list[int]:
    frames = []
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
        async with run_daemon(sock_b, instance_id=f"b-{key}", **settings):
            app = await connect(sock_b, {"client_id": "app"})  # its queue exists: the backlog waits in it
            resume = {"epoch": app.welcome["epoch"], "seq": app.welcome["seq"]}
            await app.close()
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
                await wait_for(lambda: _said(caplog, "has held a delivery"), what="the channel closed under it")
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
        async with run_daemon(sock_b, instance_id=f"b-{key}", **settings):
            app = await connect(sock_b, {"client_id": "app"})
            resume = {"epoch": app.welcome["epoch"], "seq": app.welcome["seq"]}
            await app.close()
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
