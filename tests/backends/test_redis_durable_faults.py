"""Durable mode on Redis when things go wrong: Redis SIGKILLed mid-stream, Redis losing its data, retention
overtaking an instance that is away; and two real daemons, one of them away while the other publishes."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio

from backends.base import BackendConfig, BackendState, BackendUnavailable, Mode, PublishTimeout
from backends.redis import RedisStreamsBackend
from backends.redis_streams import stream_key
from tests.backends.support import Inbox, Started
from tests.backends.test_redis_durable import Factory, bodies
from tests.brokers import serve
from tests.brokers.redis import RedisServer
from tests.conftest import Connect
from tests.utils import DROPPED, metric, publish_frame, run_daemon, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    yield from serve(RedisServer(persistent=True))  # appendonly yes, appendfsync always


@pytest.fixture(scope="module")
def volatile() -> Iterator[RedisServer]:
    yield from serve(RedisServer())  # no persistence: a restart loses every stream and group


@pytest.fixture
def backend(server: RedisServer, started: Started) -> Factory:
    async def factory(
        instance_id: str,
        *,
        uri: str | None = None,
        on_state: Callable[[BackendState], None] | None = None,
        retention: int = 1_000_000,
    ) -> RedisStreamsBackend:
        config = BackendConfig(uri or server.uri, instance_id, 2.0, mode=Mode.DURABLE, retention=retention)
        return await started(RedisStreamsBackend(config, on_state=on_state))

    return factory


T = TypeVar("T", bound=Hashable)


def first_occurrences(items: list[T]) -> list[T]:
    return list(dict.fromkeys(items))


async def test_redis_killed_mid_stream_loses_nothing_publish_confirmed(
    server: RedisServer, backend: Factory, topic: str
) -> None:
    states: list[BackendState] = []
    a, b = await backend("a"), await backend("b", on_state=states.append)
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    confirmed: list[bytes] = []
    done = asyncio.Event()

    async def publish_until_done() -> None:
        """As the outbox does: each batch again until publish() returns, in order."""
        batch = 0
        for _ in range(100_000):  # a bound; the test ends it long before
            if done.is_set():
                return
            payload = bodies(10, f"{batch}-")
            try:
                await a.publish(topic, payload)
            except (BackendUnavailable, PublishTimeout):
                await wait_for(lambda: a.state is BackendState.CONNECTED or done.is_set(), 10.0, "a to reconnect")
                continue
            confirmed.extend(payload)
            batch += 1

    publisher = asyncio.create_task(publish_until_done())
    await wait_for(lambda: len(confirmed) >= 2000, 10.0, "2,000 confirmed before the kill")
    server.kill()
    at_kill = len(confirmed)
    await wait_for(lambda: BackendState.RECONNECTING in states, 3.0, "b to notice")
    server.start()
    await wait_for(lambda: states[-1:] == [BackendState.CONNECTED], 5.0, "b back")
    await wait_for(lambda: len(confirmed) >= at_kill + 2000, 10.0, "2,000 more confirmed after the restart")
    done.set()
    await publisher
    await wait_for(lambda: set(confirmed) <= set(inbox.bodies), 10.0, "every confirmed message at b")
    # At least once: a batch whose reply the kill swallowed is published again. Never lost, never reordered.
    assert first_occurrences(inbox.bodies) == confirmed
    probe = redis.asyncio.Redis.from_url(server.uri)
    try:
        entries = await probe.xrange(stream_key(topic))
    finally:
        await probe.aclose()
    assert entries is not None
    stored = [fields[b"body"] if fields is not None else None for _, fields in entries]  # None: a deleted entry
    assert first_occurrences(stored) == confirmed, "Redis's AOF kept every entry it had answered"


async def test_redis_that_lost_its_data_is_noticed(
    volatile: RedisServer, backend: Factory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    states: list[BackendState] = []
    a = await backend("a", uri=volatile.uri)
    b = await backend("b", uri=volatile.uri, on_state=states.append)
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    await a.publish(topic, [b"before"])
    await inbox.wait(1)
    volatile.restart()  # the stream and the groups are gone
    await wait_for(lambda: states[-2:] == [BackendState.RECONNECTING, BackendState.CONNECTED], 5.0, "b back")
    assert any("consumer group b was gone from" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    await wait_for(lambda: a.state is BackendState.CONNECTED, 5.0, "a back")
    await a.publish(topic, [b"after"])
    assert await inbox.wait(2) == [b"before", b"after"]


async def test_retention_overtaking_an_instance_that_is_away_is_logged(
    backend: Factory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = await backend("a", retention=200)
    b = await backend("b")
    first = Inbox()
    await b.subscribe(topic, first)
    # Having read up to the end of the stream once, Redis knows how far b has read (XINFO GROUPS entries-read).
    await a.publish(topic, [b"first"])
    await first.wait(1)
    await b.close()
    sent = bodies(1000)
    for start in range(0, 1000, 100):
        await a.publish(topic, sent[start : start + 100])
    inbox = Inbox()
    await (await backend("b")).subscribe(topic, inbox)
    await wait_for(lambda: inbox.bodies[-1:] == [sent[-1]], 5.0, "the last message")
    assert inbox.bodies == sent[-len(inbox.bodies) :] and 200 <= len(inbox.bodies) < 300
    warnings = [r.getMessage() for r in caplog.records if "had not read yet" in r.getMessage()]
    assert len(warnings) == 1, warnings
    found = re.search(r"dropped about (\d+) events", warnings[0])
    assert found and int(found.group(1)) == 1000 - len(inbox.bodies), warnings[0]


async def test_daemon_away_gets_all_500_events_in_order_once(
    server: RedisServer, sock_dir: Path, connect: Connect
) -> None:
    key = f"durable-{uuid.uuid4().hex}"
    common = {"backend": server.uri, "mode": "durable", "key": key}
    async with run_daemon(sock_dir / "a.sock", instance_id=f"a-{key}", **common):
        app_a = await connect(sock_dir / "a.sock", {})
        # B's first run makes its consumer group; from then on the stream keeps what B has not read.
        async with run_daemon(sock_dir / "b.sock", instance_id=f"b-{key}", **common):
            app_b = await connect(sock_dir / "b.sock", {})
            await app_a.send(publish_frame(data="first", ack=True, id="first"))
            assert (await app_a.frame_of("ack"))["id"] == "first"
            last = await app_b.frame_of("event")
            assert last["data"] == "first"
            position = {"epoch": app_b.welcome["epoch"], "seq": last["seq"]}
        for i in range(500):
            await app_a.send(publish_frame(data=i, ack=True, id=f"e{i}"))
        acks = [await app_a.frame_of("ack") for _ in range(500)]
        assert [ack["id"] for ack in acks] == [f"e{i}" for i in range(500)]
        async with run_daemon(sock_dir / "b.sock", instance_id=f"b-{key}", **common) as b:
            # B's app comes back once B is up, with its last position, which is from B's previous run.
            app_b = await connect(sock_dir / "b.sock", {"resume": position})
            assert app_b.welcome["resumed"] is True and app_b.welcome["epoch"] != position["epoch"]
            events = await app_b.events(500)
            assert [event["data"] for event in events] == list(range(500))
            assert {event["origin"] for event in events} == {f"a-{key}"}
            # Exactly once: the next event B's app gets is one published after the 500.
            await app_a.send(publish_frame(data="after", ack=True, id="after"))
            assert (await app_b.frame_of("event"))["data"] == "after"
            assert metric(b.metrics, DROPPED, reason="duplicate") == 0


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "backends")
