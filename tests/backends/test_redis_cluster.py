"""The Redis backend on a Redis Cluster: the URI, where each mode connects, following a failover in both modes.

The cluster (three masters, three replicas) is the session's `redis_cluster`; a failover leaves it whole. Its
failovers under load are fault cases 10-12 of tests/faults/.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from backends import load_backend, scheme_of
from backends.base import (
    Backend,
    BackendConfig,
    BackendConfigError,
    BackendError,
    BackendRefused,
    BackendState,
    BackendUnavailable,
    Mode,
)
from backends.redis import RedisBackend, RedisStreamsBackend
from backends.redis_cluster import Node
from backends.redis_common import parse_uri
from backends.redis_streams import stream_key
from tests.backends.support import Inbox, Started, publish_until_accepted
from tests.brokers import free_port
from tests.brokers.redis_cluster import ClusterNode, RedisCluster
from tests.utils import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

Factory = Callable[..., Awaitable[Backend]]


def test_the_uri_lists_nodes_and_options() -> None:
    uri = "redis+cluster://u:hunter2@h1:7000,[::1]:7001,h3?wait_replicas=0&socket_timeout=2"
    assert scheme_of(uri) == "redis+cluster"
    assert load_backend(uri, Mode.DURABLE) is RedisStreamsBackend
    options = parse_uri(uri, 2.0)
    assert options.cluster is not None
    assert options.cluster.seeds == [("h1", 7000), ("::1", 7001), ("h3", 6379)]
    assert options.connection_kwargs["password"] == "hunter2" and options.connection_kwargs["socket_timeout"] == 2
    assert options.wait_replicas == 0 and options.secrets == ("hunter2",)
    assert options.where == "cluster of h1:7000,[::1]:7001,h3:6379"
    assert parse_uri("redis+cluster://h1", 2.0).wait_replicas == 1  # durable: WAIT for a replica by default
    assert parse_uri("rediss+cluster://h1?ssl_cert_reqs=none", 2.0).connection_class.__name__ == "ClusterSSLConnection"


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("redis+cluster://h1:7000/2", "a cluster URI has no path"),
        ("redis+cluster://h1:7000?db=1", r"unknown URI option 'db' \(a cluster has only database 0\)"),
        ("redis+cluster://h1:7000,,h2", "an empty host"),
        ("redis+cluster://h1?wait_replicas=-1", "wait_replicas must be 0 or more"),
        ("redis+cluster://h1?sentinel_password=x", r"Sentinel options need redis\+sentinel://"),
    ],
)
def test_a_bad_uri_is_refused_clearly(uri: str, error: str) -> None:
    with pytest.raises(BackendConfigError, match=error) as raised:
        parse_uri(uri, 2.0)
    assert "sentinel_password=x" not in str(raised.value)


def test_durable_streams_of_a_key_share_its_slot() -> None:
    assert stream_key("k", cluster=True) == "syncar:stream:{k}"
    assert key_slot(stream_key("k", cluster=True).encode()) == key_slot(b"k")
    assert stream_key("k") == "syncar:stream:k"  # one Redis: as before


def test_cluster_nodes_lines_are_read_as_the_cluster_means_them() -> None:
    master = Node.parse("07c3 127.0.0.1:30004@31004,h master - 0 1 4 connected 0-5460 7000 [93->-e7d1]", "x")
    assert master.address == ("127.0.0.1", 30004) and master.known
    assert master.serves(7000) and master.serves(0) and not master.serves(5461)  # a migrating slot is not ours
    failed = Node.parse("67ed 127.0.0.1:30002@31002 master,fail - 0 0 2 disconnected 5461-10922", "x")
    assert not failed.serves(6000)  # a dead master is no place to connect to, until its replica is promoted
    replica = Node.parse("e7d1 :30003@31003 myself,slave 07c3 0 0 4 connected", "10.0.0.5")
    assert replica.address == ("10.0.0.5", 30003) and not replica.serves(0)  # its own address: the one asked
    assert not Node.parse("a1b2 :0@0 master,noaddr - 0 0 0 disconnected", "x").known


@pytest.fixture
def backend(redis_cluster: RedisCluster, started: Started, topic: str) -> Factory:
    """`await backend(durable=..., uri=...)`: a started backend on the cluster, its key `topic`, closed when the
    test ends."""

    async def factory(
        durable: bool = False, uri: str | None = None, states: list[BackendState] | None = None, **config: Any
    ) -> Backend:
        settings = BackendConfig(
            uri or redis_cluster.uri,
            f"test-{len(started)}-{uuid.uuid4().hex[:6]}",
            2.0,
            mode=Mode.DURABLE if durable else Mode.BROADCAST,
            reconnect_max_delay=0.5,
            **{"key": topic, **config},
        )
        cls = RedisStreamsBackend if durable else RedisBackend
        return await started(cls(settings, on_state=None if states is None else states.append))

    return factory


async def test_durable_mode_connects_to_the_slot_owner_and_names_the_members(
    redis_cluster: RedisCluster, backend: Factory, topic: str
) -> None:
    sender, receiver = await backend(durable=True), await backend(durable=True)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"one", b"two"])
    assert await inbox.wait(2) == [b"one", b"two"]
    owner = redis_cluster.owner(stream_key(topic, cluster=True))
    assert receiver.node == owner.address  # what status frames and /metrics show
    assert sorted(receiver.members) == sorted(node.address for node in redis_cluster.nodes.values())
    probe = Redis(host="127.0.0.1", port=owner.port)
    try:  # the entries are on the slot owner, and a replica had them before the publish returned
        assert await probe.xlen(stream_key(topic, cluster=True)) == 2
    finally:
        await probe.aclose()
    with pytest.raises(BackendError, match="serves the streams of its key"):
        await sender.publish(f"{topic}-other", [b"x"])  # another slot: a clear refusal, not a MOVED loop


def key_of(redis_cluster: RedisCluster, master: ClusterNode) -> str:
    """A key whose slot `master` serves."""
    return next(key for key in (f"k-{n}" for n in range(10_000)) if redis_cluster.owner(key) is master)


async def test_broadcast_reaches_subscribers_on_other_nodes(redis_cluster: RedisCluster, backend: Factory) -> None:
    # Each backend connects to the master of its key's slot, one per master; classic pub/sub crosses the cluster
    # bus to the others.
    masters = [node for node in redis_cluster.nodes.values() if redis_cluster.is_master(node)]
    sender, *receivers = [await backend(key=key_of(redis_cluster, master)) for master in masters]
    inboxes = [Inbox() for _ in receivers]
    topic = f"t-{uuid.uuid4().hex[:8]}"
    for receiver, inbox in zip(receivers, inboxes, strict=True):
        await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"hello"])
    for inbox in inboxes:
        assert await inbox.wait(1) == [b"hello"]
    assert [r.node for r in (sender, *receivers)] == [master.address for master in masters]


async def clients_named(redis_cluster: RedisCluster, name: str) -> set[str]:
    """The nodes on which a client named `name` is connected."""
    where = set()
    for node in redis_cluster.nodes.values():
        if node.process is not None and node.process.poll() is None:
            async with Redis(host="127.0.0.1", port=node.port) as probe:
                clients = await probe.client_list()
            where |= {node.address for client in clients if client["name"] == name}
    return where


async def test_broadcast_fleet_meets_on_the_master_of_its_keys_slot(
    redis_cluster: RedisCluster, backend: Factory, topic: str
) -> None:
    """Daemons given different nodes, none of them the master of the key's slot, all go there: no event of the
    fleet crosses the cluster bus, whose links have Nagle on (14.78 ms p50 at 1,000/s across two masters, 0.69 ms
    on one; docs/benchmarks/history.md, "Where Redis Cluster's milliseconds go"). Before, each stayed on the first node
    of its URI that answered."""
    owner = redis_cluster.owner(topic)
    others = [node for node in redis_cluster.nodes.values() if node is not owner]
    replica, master = redis_cluster.replica_of(owner), next(n for n in others if redis_cluster.is_master(n))
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    fleet = [await backend(uri=f"redis+cluster://{seed.address}?client_name={name}") for seed in (replica, master)]
    assert [daemon.node for daemon in fleet] == [owner.address, owner.address]
    assert await clients_named(redis_cluster, name) == {owner.address}  # every connection of both
    inbox = Inbox()
    await fleet[1].subscribe(topic, inbox)
    await fleet[0].publish(topic, [b"one", b"two"])
    assert await inbox.wait(2) == [b"one", b"two"]


@pytest.mark.parametrize("durable", [False, True], ids=["pubsub", "streams"])
async def test_both_modes_follow_a_failover(
    redis_cluster: RedisCluster, backend: Factory, topic: str, durable: bool
) -> None:
    states: list[BackendState] = []
    sender, receiver = await backend(durable), await backend(durable, states=states)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, [b"before"])
    await inbox.wait(1)
    old = redis_cluster.nodes[int((receiver.node or ":0").rpartition(":")[2])]
    # The node the receiver reads: the master of the key's slot (durable mode: of its stream's, the same).
    assert old is redis_cluster.owner(topic) is redis_cluster.owner(stream_key(topic, cluster=True))
    if redis_cluster.is_master(old):
        assert await asyncio.to_thread(redis_cluster.fail_over, old) < 30
    else:
        old.kill()
    await wait_for(lambda: states[-2:] == [BackendState.RECONNECTING, BackendState.CONNECTED], 30, "a reconnect")

    await publish_until_accepted(sender, topic, b"after", 30)
    assert (await inbox.wait(2, 30))[-1] == b"after"
    assert receiver.node != old.address
    await asyncio.to_thread(redis_cluster.wait_whole)


async def test_some_nodes_down_a_live_one_is_reached(redis_cluster: RedisCluster, backend: Factory) -> None:
    live = next(iter(redis_cluster.nodes.values())).address
    uri = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()},{live}"
    for durable in (False, True):
        receiver = await backend(durable, uri=uri)
        assert receiver.node is not None and receiver.node in receiver.members


async def test_all_nodes_down_is_a_transient_failure(backend: Factory) -> None:
    uri = f"redis+cluster://u:hunter2@127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailable, match=r"redis: cannot connect to cluster of 127\.0\.0\.1") as raised:
        await backend(uri=uri)  # the daemon starts degraded on it and connects in the background
    assert "hunter2" not in str(raised.value)


async def test_a_redis_without_cluster_mode_is_refused(redis_server: Any, backend: Factory) -> None:
    with pytest.raises(BackendRefused, match="cluster support disabled"):
        await backend(uri=f"redis+cluster://127.0.0.1:{redis_server.port}")


async def test_broadcast_follows_one_node_and_keeps_order_through_its_death(
    redis_cluster: RedisCluster, backend: Factory, topic: str
) -> None:
    """Every connection of a broadcast backend goes to one node, and after that node dies all go to one other: a
    PUBLISH crosses the cluster bus from the node that took it, with Nagle on the links a node opens, so batches sent
    through two nodes can arrive out of order. Before, each connection asked the cluster afresh: the reader and the
    publishing connection, made again after each loss, went to different nodes (fault case 10 once had a batch of
    20 events arrive after the next). The node is the master of the key's slot, as for a fleet: once it is
    killed, the sender's only seed is its replica, the receiver's another master, and neither waits for the
    failover."""
    owner = redis_cluster.owner(topic)
    seed = redis_cluster.replica_of(owner)
    other = next(node for node in redis_cluster.nodes.values() if node is not owner and redis_cluster.is_master(node))
    name = f"pinned-{uuid.uuid4().hex[:8]}"
    sender = await backend(uri=f"redis+cluster://{seed.address}?client_name={name}")
    receiver = await backend(uri=f"redis+cluster://{other.address}")
    assert sender.node == receiver.node == owner.address
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    stop, sent = asyncio.Event(), [0]

    async def stream(channel: str, count: list[int]) -> None:
        while not stop.is_set():  # the outbox's batches and, beside them, the announcer's
            await publish_until_accepted(sender, channel, b"%d" % (count[0] + 1), 30)
            count[0] += 1
            await asyncio.sleep(0.002)

    streams = [asyncio.create_task(stream(topic, sent)), asyncio.create_task(stream(f"{topic}.peers", [0]))]
    try:
        await inbox.wait(100, 30)
        owner.kill()
        await wait_for(lambda: sender.node not in (None, owner.address), 30, "the sender's reader on another node")
        after = len(inbox.bodies)
        await inbox.wait(after + 300, 30)
        stop.set()
        await asyncio.gather(*streams)
        await wait_for(lambda: b"%d" % sent[0] in inbox.bodies, 10, "the last event")
        where = await clients_named(redis_cluster, name)
        assert where == {sender.node}, f"the sender's connections are on {sorted(where)}"
        numbers = [int(body) for body in dict.fromkeys(inbox.bodies)]  # a publish retried may arrive twice
        late = [n for n, highest in zip(numbers[1:], itertools.accumulate(numbers, max), strict=False) if n < highest]
        assert not late, f"events after later ones: {late[:10]}"
    finally:
        stop.set()
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        await asyncio.to_thread(redis_cluster.wait_whole)
