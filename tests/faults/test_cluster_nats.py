"""Failovers of a real 3-node NATS cluster (tests/brokers/nats.py NatsCluster) under 1,000 events/s, counted in the
fault suite's table (cases 7-9): daemon `a` (the publisher's) is given node 1 only, `b` (the receiver's) node 2
only; each follows the servers the cluster announces. Durable mode's stream has 3 replicas (`?replicas=3`).

Durable mode must lose and duplicate nothing an app got an ack for. Broadcast mode loses what was in flight on
the dead node; the daemons reconnect to a live node, count the failover, tell their apps (`status` frames with the
new `node`), and every event published once the path is back arrives.
"""

from __future__ import annotations

import nats
import nats.js.errors
import pytest

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


class NatsFaults(ClusterFaults[NatsCluster]):
    broker = "nats cluster"

    async def start(self, s: Scenario) -> dict[str, NatsClusterNode]:
        """Daemon a on node 1, b on node 2 (each URI names one node: the others are announced); app B on b.

        A node restarted by the last test says it is healthy before its JetStream answers every request: a daemon's
        first subscribe could time out, and a consumer made later starts after what was published meanwhile."""
        for node in self.cluster.nodes:
            await eventually(
                lambda node=node: jetstream_answers(node),
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
        up = [node.uri for node in self.cluster.nodes if node.process is not None and node.process.poll() is None]
        client = await nats.connect(servers=up, allow_reconnect=False, connect_timeout=2)
        js = client.jetstream(timeout=2)
        said: list[str] = []

        async def deleted() -> bool:
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:  # none made (broadcast mode), or deleted by an answer that was lost
                pass
            except (nats.errors.Error, OSError) as exc:  # no meta leader yet after a kill: the request goes unanswered
                said.append(f"{type(exc).__name__}: {exc}")
                return False
            return True

        try:
            await eventually(deleted, 30, f"JetStream to delete the stream {name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its last answer: {said[-1] if said else 'none'}") from None
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
