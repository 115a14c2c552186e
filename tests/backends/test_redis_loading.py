"""Redis restarted on a dataset it takes a while to load: it accepts connections at once and answers LOADING to data
commands (XADD, XREADGROUP, XGROUP, PING) until it has loaded, but serves pub/sub (PUBLISH, SUBSCRIBE) meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio

from backends.base import BackendConfig, BackendState, Mode
from backends.redis import RedisBackend, RedisStreamsBackend
from tests.backends.support import Inbox, Started
from tests.brokers import serve
from tests.brokers.redis import RedisServer
from tests.utils import eventually, wait_for

pytestmark = pytest.mark.redis

#: Keys in the dataset, and what loading each costs (redis-server's `key-load-delay`, µs): about 2 s of loading.
KEYS, LOAD_DELAY_US = 40_000, 50


class SlowLoadingRedis(RedisServer):
    """A Redis that snapshots to an RDB and, once `loading_slowly`, takes LOAD_DELAY_US per key to load it back,
    answering clients meanwhile (every KiB read, not every 2 MiB)."""

    loading_slowly = False

    def command(self) -> list[str]:
        slow = ["--key-load-delay", str(LOAD_DELAY_US), "--loading-process-events-interval-bytes", "1024"]
        return [*super().command(), *(slow if self.loading_slowly else [])]


@pytest.fixture
def server() -> Iterator[SlowLoadingRedis]:
    yield from serve(SlowLoadingRedis())


async def _loading(probe: redis.asyncio.Redis) -> bool:
    """INFO is served while Redis loads."""
    return bool((await probe.info("persistence"))["loading"])


async def test_connected_only_once_redis_serves_what_the_mode_needs(server: SlowLoadingRedis, started: Started) -> None:
    """After a restart, durable mode (publishing only, or reading its stream) reports CONNECTED once, when Redis has
    loaded its dataset, and broadcast mode once, at once, and stays so: before, a durable daemon without a
    subscription reported CONNECTED at every reconnect during the load (nothing it sent was refused) and lost it at
    its first PING, about ten times a second; broadcast mode's watchdog took the LOADING answer to its PING for a
    lost connection, every half health-check interval."""
    states: dict[str, list[BackendState]] = {}

    async def backend(name: str, mode: Mode, query: str = "") -> RedisBackend | RedisStreamsBackend:
        cls = RedisStreamsBackend if mode is Mode.DURABLE else RedisBackend
        config = BackendConfig(server.uri + query, name, 2.0, mode=mode, reconnect_max_delay=0.2)
        return await started(cls(config, on_state=states.setdefault(name, []).append))

    durable_sender = await backend("durable-sender", Mode.DURABLE)
    durable_reader = await backend("durable-reader", Mode.DURABLE)
    await durable_reader.subscribe("events", Inbox())
    broadcast_sender = await backend("broadcast-sender", Mode.BROADCAST, "?health_check_interval=0.2")
    broadcast_reader = await backend("broadcast-reader", Mode.BROADCAST, "?health_check_interval=0.2")
    inbox = Inbox()
    await broadcast_reader.subscribe("events", inbox)
    probe = redis.asyncio.Redis.from_url(server.uri)
    try:
        for first in range(0, KEYS, 1000):
            await probe.mset({f"k{n}": n for n in range(first, first + 1000)})
        await probe.save()
        server.loading_slowly = True
        await asyncio.to_thread(server.restart)
        assert await _loading(probe), "Redis loaded its dataset before the test could see it loading"
        broadcast = (broadcast_sender, broadcast_reader)
        await wait_for(
            lambda: all(b.state is BackendState.CONNECTED for b in broadcast), what="broadcast back while loading"
        )
        await broadcast_sender.publish("events", [b"while loading"])
        assert await inbox.wait(1) == [b"while loading"]
        await eventually(lambda: _not_loading(probe), 60, "Redis to load its dataset")
    finally:
        await probe.aclose()
    both = (durable_sender, durable_reader)
    await wait_for(lambda: all(b.state is BackendState.CONNECTED for b in both), 10, "durable mode back")
    # Each once down, once back: no flapping.
    assert states == {
        name: [BackendState.CONNECTED, BackendState.RECONNECTING, BackendState.CONNECTED] for name in states
    }
    assert len(states) == 4


async def _not_loading(probe: redis.asyncio.Redis) -> bool:
    return not await _loading(probe)
