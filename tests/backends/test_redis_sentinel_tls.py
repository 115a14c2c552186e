"""rediss+sentinel://: TLS to the sentinel and to the master it names, against a TLS-only master and sentinel.

One master and one sentinel (quorum 1) are enough here: failover itself is tested without TLS
(test_redis_sentinel.py); what this checks is that both hops verify and present certificates.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

from backends.base import BackendConfig, BackendRefused, Mode
from backends.redis import RedisBackend, RedisStreamsBackend
from tests.backends.support import Inbox, Started
from tests.brokers import serve
from tests.brokers.redis import RedisTlsServer
from tests.brokers.redis_sentinel import MASTER_NAME, SentinelServer

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


@pytest.fixture(scope="module")
def master() -> Iterator[RedisTlsServer]:
    yield from serve(RedisTlsServer())


@pytest.fixture(scope="module")
def sentinel(master: RedisTlsServer) -> Iterator[SentinelServer]:
    yield from serve(SentinelServer(master.port, quorum=1, tls=master))


def uri(master: RedisTlsServer, sentinel: SentinelServer, **options: str) -> str:
    return f"rediss+sentinel://127.0.0.1:{sentinel.port}/{MASTER_NAME}?{urlencode(options)}"


def trusted(master: RedisTlsServer, sentinel: SentinelServer) -> str:
    # No replica here: durable mode must not wait for one.
    certs = {"ssl_ca_certs": master.ca, "ssl_certfile": master.client_cert, "ssl_keyfile": master.client_key}
    return uri(master, sentinel, **{name: str(path) for name, path in certs.items()}, wait_replicas="0")


@pytest.mark.parametrize("mode", [Mode.BROADCAST, Mode.DURABLE], ids=["pubsub", "streams"])
async def test_events_cross_through_a_tls_sentinel_to_a_tls_master(
    master: RedisTlsServer, sentinel: SentinelServer, started: Started, topic: str, mode: Mode
) -> None:
    cls = RedisStreamsBackend if mode is Mode.DURABLE else RedisBackend
    sender, receiver = [
        await started(cls(BackendConfig(trusted(master, sentinel), f"tls-{uuid.uuid4().hex[:6]}", 5.0, mode=mode)))
        for _ in range(2)
    ]
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"over tls"])
    assert await inbox.wait(1) == [b"over tls"]
    assert receiver.node == f"127.0.0.1:{master.port}"


async def test_an_untrusted_sentinel_is_refused_as_tls_fails(master: RedisTlsServer, sentinel: SentinelServer) -> None:
    """A certificate the client cannot verify is permanent, as for rediss://: the start stops with the reason."""
    untrusted = RedisBackend(BackendConfig(uri(master, sentinel), "x", 2.0))
    try:
        with pytest.raises(
            BackendRefused,
            match=r"^redis: cannot connect to master 'mymaster' via sentinels 127\.0\.0\.1:\d+: "
            r"tls: certificate verify failed: self.signed certificate in certificate chain$",
        ):
            await untrusted.start()
    finally:
        await untrusted.close()
