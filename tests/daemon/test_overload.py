"""An app that cannot keep up with a broadcast daemon loses events, but never silently: the daemon cuts it off as
`slow_client`, and when it resumes from further back than the replay buffer holds, its `resume_gap` says how many
events it will not get, and `syncar_resume_missed_total` counts them. Events received + events reported missing =
events published, with real daemons on a real broker."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.brokers import BrokerServer
from tests.conftest import Connect
from tests.utils import RawClient, metric, run_daemon, wait_for

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
    """An app that reads everything as it comes: the numbers of its events."""

    def __init__(self, client: RawClient) -> None:
        self.numbers: list[int] = []
        self._task = asyncio.create_task(self._read(client))

    async def _read(self, client: RawClient) -> None:
        while True:
            frame = await client.frame(timeout=3600)
            if frame["type"] == "event":
                self.numbers.append(frame["data"]["n"])

    def stop(self) -> None:
        self._task.cancel()


def _frames(numbers: range) -> bytes:
    return b"".join(
        orjson.dumps({"type": "publish", "path": "stream", "event": "tick", "data": {"n": n, "pad": PAD}}) + b"\n"
        for n in numbers
    )


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
                await wait_for(lambda ahead=start: len(steady.numbers) >= ahead, TIMEOUT, "the steady app")
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
