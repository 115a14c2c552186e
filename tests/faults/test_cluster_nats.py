"""Failovers of a real 3-node NATS cluster (tests/brokers/nats.py NatsCluster) under 1,000 events/s, counted in the
fault suite's table (cases 7-9): daemon `a` (the publisher's) is given node 1 only, `b` (the receiver's) node 2
only; each follows the servers the cluster announces. Durable mode's stream has 3 replicas (`?replicas=3`).

Durable mode must lose and duplicate nothing an app got an ack for. Broadcast mode loses what was in flight on
the dead node; the daemons reconnect to a live node, count the failover, tell their apps (`status` frames with the
new `node`), and every event published once the path is back arrives.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import api

from backends.nats_jetstream import jetstream_name
from tests.brokers.nats import NatsCluster, NatsClusterNode
from tests.faults.cluster import AFTER_KILL, ClusterFaults, kill_a_node, node_killed
from tests.faults.harness import Scenario
from tests.utils import eventually

pytestmark = [pytest.mark.nats, pytest.mark.cluster, pytest.mark.faults, pytest.mark.timeout(150)]


async def jetstream_answers(node: NatsClusterNode) -> bool:
    try:
        client = await nats.connect(node.uri, allow_reconnect=False, connect_timeout=2)
    except (nats.errors.Error, OSError):
        return False
    try:
        await client.jetstream(timeout=2).account_info()
        return True
    except (nats.errors.Error, OSError):
        return False
    finally:
        await client.close()


async def live_client(cluster: NatsCluster) -> Client:
    """A client of the nodes running (a test may have killed one)."""
    up = [node.uri for node in cluster.nodes if node.process is not None and node.process.poll() is None]
    return await nats.connect(servers=up, allow_reconnect=False, connect_timeout=2)


async def answered(request: Callable[[], Awaitable[object]], what: str, timeout: float = 30) -> None:
    """Make a JetStream request until it is answered: one made while the cluster elects a meta leader after a kill
    goes unanswered. "Not found" counts as done: deleting what is not there (or went with an answer that was lost)."""
    said: list[str] = []

    async def done() -> bool:
        try:
            await request()
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, OSError) as exc:
            said.append(f"{type(exc).__name__}: {exc}")
            return False
        return True

    try:
        await eventually(done, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last answer: {said[-1] if said else 'none'}") from None


class NatsFaults(ClusterFaults[NatsCluster, NatsClusterNode]):
    broker = "nats cluster"

    async def start(self, s: Scenario) -> dict[str, NatsClusterNode]:
        """Daemon a on node 1, b on node 2 (each URI names one node: the others are announced); app B on b.

        A node restarted by the last test says it is healthy before its JetStream answers every request: a daemon's
        first subscribe could time out, and a consumer made later starts after what was published meanwhile."""
        for node in self.cluster.nodes:
            await eventually(
                partial(jetstream_answers, node),
                30,
                f"JetStream to answer on node {node.index}",
            )
        replicas = "?replicas=3" if s.mode == "durable" else ""
        reached = {"a": self.cluster.nodes[0], "b": self.cluster.nodes[1]}
        await s.start(
            ("a", "b"),
            {"B": "b"},
            daemon_args={label: ["--backend", f"{node.uri}{replicas}"] for label, node in reached.items()},
        )
        return reached

    async def after_kill(self, s: Scenario, victim: NatsClusterNode, killed: float) -> str:
        """The killed node stays down until the test is over."""
        await s.stream(AFTER_KILL)
        return f"node n{victim.index} killed"

    async def clear(self, s: Scenario) -> None:
        """Delete the test's stream, and with it the daemons' consumers, while the node it killed is still down.

        A durable daemon's resume after a kill may delete its consumer and make it again (it had unacknowledged
        deliveries, or pull requests waiting). nats-server 2.9.10 brings a node back to such a consumer with its old
        raft group if the others snapshotted their metadata meanwhile (which any deletion does, 2 s after the last
        snapshot), and reports it not current until the consumer is deleted: the `--instance-ttl` of 60 s after the
        daemons stopped, as long as `whole()` waits (seen once in CI). Fixed in 2.10.26 (nats-server #6507). A stream
        deleted while the node is down is deleted on it when it comes back, its consumers with it."""
        name = jetstream_name(s.key)
        client = await live_client(self.cluster)
        try:
            await answered(lambda: client.jetstream(timeout=2).delete_stream(name), f"JetStream to delete {name}")
        finally:
            await client.close()

    @property
    def first(self) -> NatsClusterNode:
        return self.cluster.nodes[0]

    def whole(self) -> None:
        self.cluster.whole()


@pytest.fixture
def cluster(nats_cluster: NatsCluster) -> NatsFaults:
    return NatsFaults(nats_cluster)


test_a_daemons_node_killed = node_killed("7", "8")


async def stream_leader(cluster: NatsCluster, topic: str) -> NatsClusterNode:
    client = await nats.connect(servers=[node.uri for node in cluster.nodes])
    try:
        info = await client.jetstream().stream_info(jetstream_name(topic))
    finally:
        await client.close()
    assert info.cluster is not None and info.cluster.leader is not None
    return next(node for node in cluster.nodes if f"n{node.index}" == info.cluster.leader)


@pytest.mark.case("9")
@pytest.mark.parametrize("mode", ["durable"])
async def test_stream_leader_killed(cluster_scenario: Scenario, cluster: NatsFaults) -> None:
    s = cluster_scenario
    reached = await cluster.start(s)
    await s.stream(1000)
    leader = await stream_leader(cluster.cluster, s.key)
    await kill_a_node(s, cluster, reached, leader, "the stream's leader")


#: nats-server 2.9.10 snapshots its metadata at a deletion more than 2 s after its last snapshot (monitorCluster).
#: Nothing tells when one was made: waiting this long before a deletion is the only way to have one.
SNAPSHOT_GAP = 2.5
#: Where nats-server #6507 is fixed: a node brought back to a consumer made again while it was down runs the new one.
FIXED_IN = (2, 10, 26)


async def until(node: NatsClusterNode, condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` on the node's /healthz (a blocking HTTP read, so off the loop) for 30 s; fail with what the node
    said last."""
    try:
        await eventually(lambda: asyncio.to_thread(condition), 30, f"node n{node.index} {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (it said {node.health!r})") from None


async def test_a_node_back_to_a_consumer_made_again_is_whole_once_the_stream_is_deleted(
    nats_cluster: NatsCluster,
) -> None:
    """What `NatsFaults.clear` is for: a node killed, a consumer deleted and made again (as a daemon's resume does),
    a deletion that makes the live nodes snapshot their metadata, the node back. On a server before 2.10.26 the node
    runs the consumer's old raft group and its /healthz says the consumer is not current (stream `kept`); a stream
    deleted while the node was down (`cleared`, as `clear` does) leaves nothing behind, and one deleted once the node
    is back clears it too."""
    suffix = uuid.uuid4().hex[:8]
    names = {label: jetstream_name(f"remade-{label}-{suffix}") for label in ("kept", "cleared")}
    consumer = api.ConsumerConfig(durable_name="remade", ack_policy=api.AckPolicy.EXPLICIT)
    victim = nats_cluster.nodes[0]
    client = await live_client(nats_cluster)
    server = client.connected_server_version
    version = (server.major, server.minor, server.patch)
    js = client.jetstream(timeout=2)
    try:
        for name in names.values():
            await js.add_stream(api.StreamConfig(name=name, subjects=[f"remade.{name}"], num_replicas=3))
            await js.add_consumer(name, consumer)
        await js.add_consumer(names["kept"], api.ConsumerConfig(durable_name="other"))
        await until(victim, victim.ready, "to hold the consumers")
        await client.close()
        await asyncio.to_thread(victim.kill)
        client = await live_client(nats_cluster)
        js = client.jetstream(timeout=2)
        for name in names.values():
            await answered(partial(js.delete_consumer, name, "remade"), f"{name}'s consumer deleted")
            await answered(partial(js.add_consumer, name, consumer), f"{name}'s consumer made again")
        await asyncio.sleep(SNAPSHOT_GAP)
        await answered(lambda: js.delete_consumer(names["kept"], "other"), "the deletion that makes a snapshot")
        await answered(lambda: js.delete_stream(names["cleared"]), f"{names['cleared']} deleted")
        victim.launch()
        if version < FIXED_IN:
            stale = f"JetStream consumer '$G > {names['kept']} > remade' is not current"
            await until(victim, lambda: not victim.ready() and victim.health == stale, f"to say {stale!r}")
        await answered(lambda: js.delete_stream(names["kept"]), f"{names['kept']} deleted")
        await asyncio.to_thread(nats_cluster.whole)
    finally:
        await client.close()
        client = await live_client(nats_cluster)
        try:
            for name in names.values():
                await answered(partial(client.jetstream(timeout=2).delete_stream, name), f"{name} deleted")
        finally:
            await client.close()
        await asyncio.to_thread(nats_cluster.whole)
