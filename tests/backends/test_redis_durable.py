"""The Redis backend in durable mode (streams, a consumer group per instance) against a real redis-server.

The server keeps an append-only file with `appendfsync always`, so a SIGKILL loses nothing Redis answered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis.asyncio

from backends import redis_streams
from backends.base import (
    BackendConfig,
    BackendError,
    BackendState,
    BackendUnavailable,
    Feature,
    FeatureNotSupported,
    Message,
    MessageTooLarge,
    Mode,
)
from backends.redis import RedisStreamsBackend
from backends.redis_streams import stream_key
from tests.backends.support import Inbox, Started
from tests.brokers import serve
from tests.brokers.redis import RedisServer
from tests.utils import eventually, wait_for

pytestmark = pytest.mark.redis

Factory = Callable[..., Awaitable[RedisStreamsBackend]]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    yield from serve(RedisServer(persistent=True))


@pytest.fixture
async def probe(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client to look at what the backend left on the broker."""
    client = redis.asyncio.Redis.from_url(server.uri)
    yield client
    await client.aclose()


@pytest.fixture
def backend(server: RedisServer, started: Started) -> Factory:
    """`await backend("instance-id", ...)`: a started durable RedisStreamsBackend, closed when the test ends."""

    async def factory(
        instance_id: str,
        *,
        uri: str | None = None,
        on_state: Callable[[BackendState], None] | None = None,
        retention: int = 1_000_000,
        instance_ttl: float = 86_400.0,
    ) -> RedisStreamsBackend:
        config = BackendConfig(
            uri or server.uri, instance_id, 2.0, mode=Mode.DURABLE, retention=retention, instance_ttl=instance_ttl
        )
        return await started(RedisStreamsBackend(config, on_state=on_state))

    return factory


def bodies(count: int, prefix: str = "") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


async def test_publish_is_stored_in_the_stream(backend: Factory, probe: redis.asyncio.Redis, topic: str) -> None:
    a = await backend("a")
    assert a.supports(Feature.DURABLE)
    await a.publish(topic, [b"one"])
    await a.publish(topic, [b"two", b"\x00\xffthree"])
    entries = await probe.xrange(stream_key(topic))
    assert entries is not None
    assert [fields for _, fields in entries] == [{b"body": b"one"}, {b"body": b"two"}, {b"body": b"\x00\xffthree"}]
    assert stream_key(topic) == f"syncar:stream:{topic}"


async def test_order_and_positions_of_1000_messages(backend: Factory, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    started = time.time()
    expected = bodies(1000)
    for i in range(100):
        await a.publish(topic, [expected[i]])
    for start in range(100, 1000, 150):
        await a.publish(topic, expected[start : start + 150])
    assert await inbox.wait(1000) == expected
    ids = [tuple(map(int, str(position).split("-"))) for position in inbox.positions]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    # The server's time of each entry, from its id (what signed messages are judged against).
    assert inbox.accepted == [ms / 1000 for ms, _ in ids]
    assert started - 1 < ids[0][0] / 1000 <= ids[-1][0] / 1000 < time.time() + 1


async def test_pending_entries_come_first_after_a_restart(
    backend: Factory, probe: redis.asyncio.Redis, topic: str
) -> None:
    a, b = await backend("a"), await backend("b")
    await b.subscribe(topic, Inbox())
    await b.close()
    await a.publish(topic, [b"p1", b"p2", b"p3"])
    # What a daemon killed between reading and acknowledging leaves: entries delivered to its consumer, pending.
    read = await probe.xreadgroup("b", "b", {stream_key(topic): ">"}, count=2)
    assert isinstance(read, list)  # RESP2's shape: [[stream, [(id, fields), ...]]]
    assert [fields[b"body"] for _, fields in read[0][1]] == [b"p1", b"p2"]
    await a.publish(topic, [b"new"])
    inbox = Inbox()
    await (await backend("b")).subscribe(topic, inbox)
    assert await inbox.wait(4) == [b"p1", b"p2", b"p3", b"new"]
    await eventually(lambda: _pending(probe, topic, "b", 0), 5.0, "every entry to be acknowledged")


async def _pending(probe: redis.asyncio.Redis, topic: str, group: str, count: int) -> bool:
    return int((await probe.xpending(stream_key(topic), group))["pending"]) == count


async def test_an_entry_that_always_fails_is_dropped_after_max_deliveries(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(redis_streams, "RETRY_INITIAL", 0.001)
    monkeypatch.setattr(redis_streams, "RETRY_MAX", 0.005)
    a, b = await backend("a"), await backend("b")
    seen: list[bytes] = []

    async def handler(message: Message) -> None:
        seen.append(message.body)
        if message.body == b"poison":
            raise ValueError("never works")

    await b.subscribe(topic, handler)
    await a.publish(topic, [b"poison", b"next"])
    await wait_for(lambda: b"next" in seen, 5.0, "the entry after the poison one")
    assert seen == [b"poison"] * redis_streams.MAX_DELIVERIES + [b"next"]
    assert any("failed on entry" in r.getMessage() and "dropping it" in r.getMessage() for r in caplog.records)


async def test_retention_bounds_the_stream(backend: Factory, probe: redis.asyncio.Redis, topic: str) -> None:
    a = await backend("a", retention=200)
    for start in range(0, 1000, 100):
        await a.publish(topic, bodies(100, str(start)))
    # MAXLEN ~ trims whole nodes of the stream (stream-node-max-entries, 100): never below 200, at most a node over.
    assert 200 <= await probe.xlen(stream_key(topic)) < 300


async def test_idle_instances_are_forgotten_live_ones_kept(
    backend: Factory, probe: redis.asyncio.Redis, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "backends.redis_upkeep")
    key = stream_key(topic)
    gone, alive = await backend("gone", instance_ttl=2.0), await backend("alive", instance_ttl=2.0)
    await gone.subscribe(topic, Inbox())
    await alive.subscribe(topic, Inbox())
    await gone.close()
    await probe.xgroup_create(key, "made-by-hand", "$")  # no consumer: not syncar's, never collected
    await eventually(lambda: _idle_ms(probe, key, "gone", 2000), 10.0, "instance 'gone' to be idle for 2 s")
    # The collector looks as soon as it subscribes.
    collector = await backend("collector", instance_ttl=2.0)
    await collector.subscribe(topic, Inbox())
    await eventually(lambda: _groups(probe, key, {"alive", "collector", "made-by-hand"}), 5.0, "'gone' collected")
    assert any(r.getMessage().startswith("redis: forgot instance gone on ") for r in caplog.records)
    # 'alive' publishes nothing and receives nothing, yet its heartbeat keeps it well below the ttl.
    for _ in range(30):
        assert not await _idle_ms(probe, key, "alive", 1000)
        await asyncio.sleep(0.1)
    # The collector looks again every instance_ttl / 2: 'alive' is forgotten once it stopped.
    await alive.close()
    await eventually(lambda: _groups(probe, key, {"collector", "made-by-hand"}), 10.0, "'alive' collected later")


async def _idle_ms(probe: redis.asyncio.Redis, key: str, group: str, at_least: int) -> bool:
    return min(int(consumer["idle"]) for consumer in await probe.xinfo_consumers(key, group)) > at_least


async def _groups(probe: redis.asyncio.Redis, key: str, expected: set[str]) -> bool:
    return {group["name"].decode() for group in await probe.xinfo_groups(key)} == expected


async def test_one_subscription_per_topic_and_unsubscribe(backend: Factory, topic: str) -> None:
    a, b = await backend("a"), await backend("b")
    inbox = Inbox()
    subscription = await b.subscribe(topic, inbox)
    with pytest.raises(FeatureNotSupported, match=r"^redis: durable mode takes one subscription per topic"):
        await b.subscribe(topic, Inbox())
    await a.publish(topic, [b"1"])
    await inbox.wait(1)
    await subscription.unsubscribe()
    await subscription.unsubscribe()
    await a.publish(topic, [b"2"])
    # The group stays: a new subscription of the same instance goes on where the last one stopped.
    again = Inbox()
    await b.subscribe(topic, again)
    assert await again.wait(1) == [b"2"]
    assert inbox.bodies == [b"1"]


async def test_refusals_and_limits(backend: Factory, probe: redis.asyncio.Redis, topic: str) -> None:
    a = await backend("a")
    with pytest.raises(MessageTooLarge, match=r"^redis: message of 8388609 bytes is over max_message_bytes"):
        await a.publish(topic, [b"x" * (8 * 1024 * 1024 + 1)])
    await probe.set(stream_key(f"{topic}-string"), "not a stream")
    with pytest.raises(BackendError, match=r"^redis: publish refused: WRONGTYPE ") as caught:
        await a.publish(f"{topic}-string", [b"x"])
    assert not isinstance(caught.value, BackendUnavailable)
    with pytest.raises(BackendError, match=r"^redis: subscription to '.*-string' refused: WRONGTYPE "):
        await a.subscribe(f"{topic}-string", Inbox())
    assert a.state is BackendState.CONNECTED


async def test_a_hung_broker_is_noticed_while_reading(server: RedisServer, backend: Factory, topic: str) -> None:
    states: list[BackendState] = []
    b = await backend("b", on_state=states.append)
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)  # the socket stays open: only the XREADGROUP that never returns can tell
    try:
        stopped = time.monotonic()
        await wait_for(lambda: BackendState.RECONNECTING in states, 5.0, "RECONNECTING")
        assert time.monotonic() - stopped < 2.5, "a silent broker must be noticed within ~2 s"
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_for(lambda: states[-1:] == [BackendState.CONNECTED], 10.0, "CONNECTED again")
    await (await backend("a")).publish(topic, [b"resumed"])
    assert await inbox.wait(1) == [b"resumed"]


async def test_the_documented_acl_is_enough(server: RedisServer, probe: redis.asyncio.Redis, topic: str) -> None:
    """docs/backends/redis.md lists what durable mode needs; CONFIG GET is optional and left out here."""
    user, key = f"u{uuid.uuid4().hex[:8]}", stream_key(topic)
    await probe.acl_setuser(
        user,
        enabled=True,
        passwords=["+pw-1234"],
        keys=["syncar:stream:*"],
        commands=[
            "-@all",
            "+xadd",
            "+xreadgroup",
            "+xack",
            "+xgroup|create",
            "+xgroup|createconsumer",
            "+xgroup|destroy",
            "+xinfo|stream",
            "+xinfo|groups",
            "+xinfo|consumers",
            "+multi",
            "+exec",
            "+ping",
        ],
    )
    await probe.xgroup_create(key, "departed", "$", mkstream=True)
    await probe.xgroup_createconsumer(key, "departed", "departed")
    uri = f"redis://{user}:pw-1234@127.0.0.1:{server.port}/0"
    made = [RedisStreamsBackend(BackendConfig(uri, name, 2.0, mode=Mode.DURABLE, instance_ttl=1.5)) for name in "ab"]
    try:
        for instance in made:
            await instance.start()
        inbox = Inbox()
        await made[1].subscribe(topic, inbox)
        await made[0].publish(topic, [b"allowed"])
        assert await inbox.wait(1) == [b"allowed"]
        # The collection (XINFO, XGROUP DESTROY) works for this user too.
        await eventually(lambda: _groups(probe, key, {"b"}), 10.0, "the departed group to be collected")
    finally:
        for instance in made:
            await instance.close()
        await probe.acl_deluser(user)
