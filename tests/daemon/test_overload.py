"""Overload loses events in broadcast mode, but never silently: events received + events reported missing = events
published, with real daemons on a real broker.

- An app that cannot keep up with its daemon is cut off as `slow_client`; when it resumes from further back than the
  replay buffer holds, its `resume_gap` says how many events it will not get (`syncar_resume_missed_total`).
- A daemon that cannot keep up with Redis is dropped by Redis (its pub/sub output buffer limit); once it is back,
  its apps get a `gap` frame for what went by (`syncar_events_missed_total`)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio

from tests.brokers import BrokerServer, serve
from tests.brokers.redis import RedisServer
from tests.conftest import Connect
from tests.utils import RawClient, SpawnedDaemon, http_get, metric, run_daemon, wait_for

EVENTS = 3000
WINDOW = 100  # events published ahead of what the steady app has had: a burst well within its queue
PAD = "x" * 200  # an event frame is about 330 bytes: the slow app's socket and queue hold a few hundred of them
QUEUE_BYTES = 64 * 1024  # the least --client-queue-bytes takes
REPLAY_EVENTS = 200
TIMEOUT = 20.0

BROKERS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    pytest.param("nats", marks=pytest.mark.nats),
]


class Steady:
    """An app that reads everything as it comes: the numbers of its events, its gap frames, the broker's states."""

    def __init__(self, client: RawClient) -> None:
        self.numbers: list[int] = []
        self.gaps: list[dict[str, Any]] = []
        self.broker: list[str] = []
        self._task = asyncio.create_task(self._read(client))

    async def _read(self, client: RawClient) -> None:
        while True:
            frame = await client.frame(timeout=3600)
            if frame["type"] == "event":
                self.numbers.append(frame["data"]["n"])
            elif frame["type"] == "gap":
                self.gaps.append(frame)
            elif frame["type"] == "status":
                self.broker.append(frame["broker"])

    def stop(self) -> None:
        self._task.cancel()


def _frames(numbers: range, *, ack_last: bool = False) -> bytes:
    """Publishes of events `numbers`; with `ack_last`, the last asks for an ack: once it comes, the broker has taken
    them all (the outbox sends in order)."""
    frames: list[dict[str, object]] = [
        {"type": "publish", "path": "stream", "event": "tick", "data": {"n": n, "pad": PAD}} for n in numbers
    ]
    if ack_last:
        frames[-1] |= {"id": str(numbers[-1]), "ack": True}
    return b"".join(orjson.dumps(frame) + b"\n" for frame in frames)


def _lines(received: bytes) -> list[dict[str, Any]]:
    """The whole frames in what an app read before its connection ended (it may end within one)."""
    return [orjson.loads(line) for line in received.split(b"\n")[:-1]]


@pytest.mark.parametrize("broker_name", BROKERS)
async def test_an_app_that_stops_reading_is_told_every_event_it_missed(
    broker_name: str, request: pytest.FixtureRequest, sock_dir: Path, connect: Connect
) -> None:
    broker: BrokerServer = request.getfixturevalue(f"{broker_name}_server")
    key = f"overload-{uuid.uuid4().hex}"
    settings: dict[str, Any] = {"backend": broker.uri, "key": key}
    receiving = {"client_queue_bytes": QUEUE_BYTES, "replay_events": REPLAY_EVENTS}
    a_sock, b_sock = sock_dir / "a.sock", sock_dir / "b.sock"
    async with (
        run_daemon(a_sock, instance_id=f"a-{key[9:17]}", **settings),
        run_daemon(b_sock, instance_id=f"b-{key[9:17]}", **settings, **receiving) as b,
    ):
        steady = Steady(await connect(b_sock, {"subscribe": ["stream"]}))
        # The slow app: a stream that stops taking bytes once it holds a few KiB unread, so that its socket fills,
        # then its queue in the daemon.
        reader, writer = await asyncio.open_unix_connection(b_sock, limit=4096)
        writer.write(orjson.dumps({"type": "hello", "client_id": "slow", "subscribe": ["stream"]}) + b"\n")
        welcome = orjson.loads(await reader.readline())
        assert welcome["type"] == "welcome", welcome
        try:
            publisher = await connect(a_sock, {"subscribe": ["control"]})
            for start in range(0, EVENTS, WINDOW):
                await publisher.send(_frames(range(start, min(start + WINDOW, EVENTS))))
                await wait_for(lambda: len(steady.numbers) >= start, TIMEOUT, "the steady app")  # noqa: B023 - awaited at once
            await wait_for(lambda: len(steady.numbers) == EVENTS, TIMEOUT, "the steady app to have every event")
            assert steady.numbers == list(range(EVENTS))
            cut = {"reason": "slow_client"}
            assert metric(b.metrics, "syncar_client_disconnects_total", **cut) == 1, "the slow app was not cut off"

            # It reads what it got before the cut (the daemon closed its connection after the slow_client error, or
            # aborted it within a frame), and resumes from the last event it has whole.
            async with asyncio.timeout(TIMEOUT):
                before = _lines(await reader.read())
            assert before[-1:] == [] or before[-1]["type"] in ("event", "error"), before[-1]
            numbers = [frame["data"]["n"] for frame in before if frame["type"] == "event"]
            seq = max((frame["seq"] for frame in before if frame["type"] == "event"), default=welcome["seq"])
            resume = {"epoch": welcome["epoch"], "seq": seq}
            again = await connect(b_sock, {"client_id": "slow", "subscribe": ["stream"], "resume": resume})
            assert again.welcome["resumed"] is False
            gap = await again.frame()
            assert (gap["type"], gap["code"]) == ("error", "resume_gap"), gap
            # What the buffer still holds comes after it: the last REPLAY_EVENTS events.
            numbers += [event["data"]["n"] for event in await again.events(REPLAY_EVENTS)]
        finally:
            steady.stop()
            writer.close()
        print(f"\n{broker_name}: the slow app got {len(numbers)} of {EVENTS} events, resume_gap {gap}")
        assert numbers == sorted(set(numbers)), "an event repeated or out of order"
        assert gap["missed"] > 0, "the slow app missed nothing: the test proves nothing"
        assert len(numbers) + gap["missed"] == EVENTS
        assert (gap["first"], gap["last"]) == (seq + 1, seq + gap["missed"])
        assert metric(b.metrics, "syncar_resume_missed_total") == gap["missed"]


@pytest.fixture(scope="module")
def small_buffers() -> Iterator[RedisServer]:
    """A Redis that drops a pub/sub subscriber once 1 MiB waits for it (the default is 32 MiB)."""
    yield from serve(RedisServer())


async def _subscribed(client: redis.asyncio.Redis) -> set[int]:
    """The ids of the connections subscribed to something."""
    return {int(entry["id"]) for entry in await client.client_list() if int(entry["sub"]) > 0}


#: Chunks of WINDOW events published at most while the receiving daemon is stopped, until Redis drops it (its socket
#: buffers take a few MiB first).
MAX_CHUNKS = 400


@pytest.mark.redis
async def test_a_daemon_redis_drops_as_too_slow_tells_its_apps_every_event_it_missed(
    small_buffers: RedisServer, sock_dir: Path, connect: Connect
) -> None:
    probe = redis.asyncio.from_url(small_buffers.uri)
    await probe.config_set("client-output-buffer-limit", "pubsub 1048576 0 0")
    key = f"overload-{uuid.uuid4().hex}"
    b_sock = sock_dir / "b.sock"
    # B in a process of its own, to be stopped as a daemon starved of CPU would be.
    b = SpawnedDaemon(b_sock, "--backend", small_buffers.uri, "--key", key, "--instance-id", f"b-{key[9:17]}", name="b")
    app: Steady | None = None
    try:
        await b.ready()
        subscribed = await _subscribed(probe)  # B's: A is not started yet
        app = Steady(await connect(b_sock, {"subscribe": ["stream"]}))
        async with run_daemon(sock_dir / "a.sock", instance_id=f"a-{key[9:17]}", backend=small_buffers.uri, key=key):
            publisher = await connect(sock_dir / "a.sock", {"subscribe": ["control"]})
            await publisher.send(_frames(range(1)))
            await wait_for(lambda: app.numbers == [0], TIMEOUT, "B's app to hear A")
            os.kill(b.process.pid, signal.SIGSTOP)
            published = 1
            try:
                for _ in range(MAX_CHUNKS):
                    await publisher.send(_frames(range(published, published + WINDOW), ack_last=True))
                    published += WINDOW
                    await publisher.frame_of("ack")  # Redis has taken the chunk
                    if not subscribed & await _subscribed(probe):
                        break
                else:
                    pytest.fail(f"Redis did not drop the stopped daemon after {published} events")
            finally:
                os.kill(b.process.pid, signal.SIGCONT)
            await wait_for(lambda: app.broker[-2:] == ["down", "up"], TIMEOUT, "B to be back on Redis")
            await publisher.send(_frames(range(published, published + 1)))  # the next event: it shows the gap
            published += 1
            await wait_for(lambda: app.numbers[-1:] == [published - 1], TIMEOUT, "the last event")
        missed = sum(gap["missed"] for gap in app.gaps)
        _, text = await http_get(b.http_port, "/metrics")
        print(f"\nB's app got {len(app.numbers)} of {published} events; gaps {app.gaps}")
        assert app.numbers == sorted(set(app.numbers)), "an event repeated or out of order"
        assert missed > 0, "Redis dropped B but nothing was lost: the test proves nothing"
        assert len(app.numbers) + missed == published
        assert all(gap["reason"] == "lost" and gap["origin"] == f"a-{key[9:17]}" for gap in app.gaps), app.gaps
        assert f"syncar_events_missed_total {float(missed)}" in text
    finally:
        if app is not None:
            app.stop()
        await b.stop()
        await probe.aclose()
