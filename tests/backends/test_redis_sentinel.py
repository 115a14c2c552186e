"""The Redis backend through Sentinel: the URI, finding the master, following it through a failover in both modes.

The group (one master, one replica, three sentinels) is the session's `redis_sentinel`; a failover leaves it whole.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from backends import load_backend, scheme_of
from backends.base import (
    Backend,
    BackendConfig,
    BackendConfigError,
    BackendState,
    BackendUnavailable,
    Mode,
)
from backends.redis import RedisBackend, RedisStreamsBackend
from backends.redis_common import parse_uri
from tests.backends.support import Inbox, Started, publish_until_accepted
from tests.brokers import free_port
from tests.brokers.redis_sentinel import MASTER_NAME, SentinelGroup
from tests.utils import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

Factory = Callable[..., Awaitable[Backend]]


def test_the_uri_names_sentinels_master_and_options() -> None:
    uri = "redis+sentinel://u:hunter2@s1:26380,[::1]:26381,s3/mymaster?db=2&sentinel_password=sekrit&wait_replicas=0"
    assert scheme_of(uri) == "redis+sentinel"
    assert load_backend(uri, Mode.DURABLE) is RedisStreamsBackend
    options = parse_uri(uri, 2.0)
    assert options.sentinel is not None and options.master_name == "mymaster"
    assert [r.connection_pool.connection_kwargs["port"] for r in options.sentinel.sentinels] == [26380, 26381, 26379]
    assert options.sentinel.sentinel_kwargs["password"] == "sekrit"
    assert options.connection_kwargs["db"] == 2 and options.connection_kwargs["password"] == "hunter2"
    assert options.wait_replicas == 0 and set(options.secrets) == {"hunter2", "sekrit"}
    assert "hunter2" not in options.where and "sekrit" not in options.where
    assert parse_uri("rediss+sentinel://s1/m", 2.0).sentinel.sentinel_kwargs["ssl"]  # type: ignore[union-attr]
    assert parse_uri("redis+sentinel://s1/m", 2.0).wait_replicas == 1  # durable: WAIT for a replica by default


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("redis+sentinel://s1:26379", "the path must be the master's name"),
        ("redis+sentinel://s1:26379,/m", "an empty host"),
        ("redis+sentinel://s1:26379/m?wait_replicas=-1", "wait_replicas must be 0 or more"),
        ("redis://h/0?sentinel_password=x", r"Sentinel options need redis\+sentinel://"),
    ],
)
def test_a_bad_uri_is_refused_clearly(uri: str, error: str) -> None:
    with pytest.raises(BackendConfigError, match=error) as raised:
        parse_uri(uri, 2.0)
    assert "sentinel_password=x" not in str(raised.value)


@pytest.fixture
def backend(redis_sentinel: SentinelGroup, started: Started) -> Factory:
    """`await backend(durable=..., uri=...)`: a started backend through the sentinels, closed when the test ends."""

    async def factory(
        durable: bool = False, uri: str | None = None, states: list[BackendState] | None = None, **config: Any
    ) -> Backend:
        mode = Mode.DURABLE if durable else Mode.BROADCAST
        settings = BackendConfig(
            uri or redis_sentinel.uri,
            f"test-{len(started)}-{uuid.uuid4().hex[:6]}",
            2.0,
            mode=mode,
            reconnect_max_delay=0.5,
            **config,
        )
        cls = RedisStreamsBackend if durable else RedisBackend
        return await started(cls(settings, on_state=None if states is None else states.append))

    return factory


@pytest.mark.parametrize("durable", [False, True], ids=["pubsub", "streams"])
async def test_both_modes_follow_the_master_through_a_failover(
    redis_sentinel: SentinelGroup, backend: Factory, topic: str, durable: bool
) -> None:
    states: list[BackendState] = []
    sender, receiver = await backend(durable), await backend(durable, states=states)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"before"])
    await inbox.wait(1)
    old = redis_sentinel.master_port()
    assert receiver.node == f"127.0.0.1:{old}"  # what status frames and /metrics show
    assert len(receiver.members) == 3
    took = await asyncio.to_thread(redis_sentinel.fail_over)
    new = redis_sentinel.master_port()
    assert new != old and took < 30
    # The receiver lost its master and found the new one through the sentinels; the sender finds it on its next
    # publish (retried as the outbox would, until accepted).
    await wait_for(lambda: states[-2:] == [BackendState.RECONNECTING, BackendState.CONNECTED], 20, "a reconnect")

    await publish_until_accepted(sender, topic, b"after", 20)
    assert await inbox.wait(2, 20) == [b"before", b"after"]
    assert receiver.node == f"127.0.0.1:{new}"


async def test_a_demoted_master_is_left_for_the_new_one(
    redis_sentinel: SentinelGroup, backend: Factory, topic: str
) -> None:
    # The old master stays up as a replica, its clients connected: writes to it answer READONLY, and so does the
    # XREADGROUP of durable mode. Both modes at once: one switch-over takes the sentinels a few seconds.
    pairs = [(await backend(durable), await backend(durable), Inbox()) for durable in (False, True)]
    for _, receiver, inbox in pairs:
        await receiver.subscribe(topic, inbox)
    await asyncio.to_thread(redis_sentinel.switch_over)
    new = f"127.0.0.1:{redis_sentinel.master_port()}"
    durable_receiver = pairs[1][1]
    await wait_for(lambda: durable_receiver.node == new, 20, f"the durable reader on the new master {new}")
    for sender, _, inbox in pairs:
        await publish_until_accepted(sender, topic, b"after", 20)
        # Pub/sub: a subscriber left on the demoted master still gets what the new one publishes (replicas pass
        # pub/sub on), until the sentinels disconnect it.
        assert await inbox.wait(1, 20) == [b"after"]


async def test_some_sentinels_down_a_live_one_is_asked(
    redis_sentinel: SentinelGroup, backend: Factory, topic: str
) -> None:
    live = ",".join(f"127.0.0.1:{s.port}" for s in redis_sentinel.sentinels[:1])
    uri = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()},{live}/{MASTER_NAME}"
    sender, receiver = await backend(uri=uri), await backend(uri=uri)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"one"])
    assert await inbox.wait(1) == [b"one"]


async def test_all_sentinels_down_is_a_transient_failure(backend: Factory) -> None:
    uri = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/{MASTER_NAME}"
    with pytest.raises(BackendUnavailable, match="master 'mymaster' via sentinels"):
        await backend(uri=uri)  # the daemon starts degraded on it and connects in the background
