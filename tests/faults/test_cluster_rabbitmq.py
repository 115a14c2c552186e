"""Failovers of a real 3-node RabbitMQ cluster (tests/brokers/rabbitmq.py RabbitCluster) under 1,000 events/s,
counted in the fault suite's table (cases 12-14). Both daemons are given every node (`amqp://...@n1,n2,n3/`) and
each starts at a random one, as a fleet would: the case kills the node daemon `a` (the publisher's) reached, the
node `b` (the receiver's) reached, or (durable mode) the leader of b's quorum queue; a row's note says when the
other daemon was on the same node. Durable mode's queues are quorum queues (the default for a host list), with a
member on each node.

Durable mode must lose and duplicate nothing an app got an ack for. Broadcast mode loses what was in flight on the
dead node (b's exclusive queue dies with it), counts it (gap frames, syncar_events_missed_total), tells the apps
(`status`), and every event published once the path is back arrives.
"""

from __future__ import annotations

import asyncio

import pytest

from backends.amqp_topology import durable_queue_name
from tests.brokers.rabbitmq import RabbitCluster, RabbitClusterNode
from tests.faults.apps import now
from tests.faults.cluster import AFTER_KILL, ClusterFaults, kill_a_node, node_killed
from tests.faults.harness import Scenario

pytestmark = [pytest.mark.rabbitmq, pytest.mark.cluster, pytest.mark.faults, pytest.mark.timeout(180)]


class RabbitFaults(ClusterFaults[RabbitCluster, RabbitClusterNode]):
    broker = "rabbitmq cluster"

    async def start(self, s: Scenario) -> dict[str, RabbitClusterNode]:
        """Daemons a and b on the whole cluster, app B on b; the node each reached (its `welcome` names it)."""
        await s.start(("a", "b"), {"B": "b"}, daemon_args={label: ["--backend", self.cluster.uri] for label in "ab"})
        reached = {}
        for label in ("a", "b"):
            welcome = next(frame for _, frame in s.watches[label].frames if frame.get("type") == "welcome")
            reached[label] = self.cluster.node_at(str(welcome["node"]))
        return reached

    async def after_kill(self, s: Scenario, victim: RabbitClusterNode, killed: float) -> str:
        """Start the killed node again as its supervisor would, the stream going on meanwhile. (On RabbitMQ 3.10.8
        the two members left of a quorum queue did not always elect a leader: publishes routed to it were nacked
        until the third came back, docs/backends/rabbitmq.md.)"""

        async def restart() -> float:
            await asyncio.to_thread(self.cluster.whole)
            return now() - killed

        back = asyncio.create_task(restart())
        await s.stream(AFTER_KILL)
        return f"node {victim.index} killed, back after {await back:.1f}s"

    @property
    def first(self) -> RabbitClusterNode:
        return self.cluster.nodes[0]

    def whole(self) -> None:
        self.cluster.whole()


@pytest.fixture
def cluster(rabbitmq_cluster: RabbitCluster) -> RabbitFaults:
    return RabbitFaults(rabbitmq_cluster)


test_a_daemons_node_killed = node_killed("12", "13")


def queue_leader(cluster: RabbitCluster, queue: str) -> RabbitClusterNode:
    rows = cluster.nodes[0].list("queues", "name", "leader")
    leader = next(row["leader"] for row in rows if row["name"] == queue)
    return next(node for node in cluster.nodes if node.node == leader)


@pytest.mark.case("14")
@pytest.mark.parametrize("mode", ["durable"])
async def test_quorum_queue_leader_killed(cluster_scenario: Scenario, cluster: RabbitFaults) -> None:
    s = cluster_scenario
    reached = await cluster.start(s)
    await s.stream(1000)
    queue = durable_queue_name(s.key, f"b-{s.key[-10:]}")  # the instance id Scenario gives daemon b
    leader = await asyncio.to_thread(queue_leader, cluster.cluster, queue)
    await kill_a_node(s, cluster, reached, leader, "leader of b's quorum queue")
