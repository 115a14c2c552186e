"""Failovers of a real 6-node Redis Cluster (tests/brokers/redis_cluster.py, cluster-node-timeout 1500 ms) under
1,000 events/s, counted in the fault suite's table (case 10).

Broadcast mode connects to the master of the key's slot while it is live: daemon `a` (the publisher's) is given
that master only, `b` (the receiver's) the master of another slot only, and `b` learns from it where its key's
slot is served. Durable mode connects both daemons to the master of the slot of the key's stream (the same slot),
which holds the stream. So in both modes killing that master is at once case 10 (the publisher's node) and the
receiver's node (case 11 before broadcast mode chose the key's slot too): one row per mode. Once it is killed,
each daemon goes to a node of its own URI, or one the cluster announced, without waiting for the failover.

Durable mode must lose and duplicate nothing an app got an ack for (WAIT for a replica). Broadcast mode loses what
was in flight on the dead node, counts it (gap frames, syncar_events_missed_total), tells the apps (`status`), and
every event published once the path is back arrives. The killed node comes back as a replica before the rest of
the stream: durable publishes wait for a replica (WAIT 1), and the next test finds the cluster whole.
"""

from __future__ import annotations

import asyncio

import pytest

from backends.redis_streams import stream_key
from tests.brokers.redis_cluster import ClusterNode, RedisCluster
from tests.faults.apps import now
from tests.faults.cluster import AFTER_KILL, ClusterFaults, node_killed
from tests.faults.harness import Scenario
from tests.faults.report import RECOVERY_LIMIT

pytestmark = [pytest.mark.redis, pytest.mark.cluster, pytest.mark.faults, pytest.mark.timeout(150)]


class RedisFaults(ClusterFaults[RedisCluster, ClusterNode]):
    broker = "redis cluster"
    #: No leader election: the cluster promotes the replica of the stream's master (3 to 4 s).
    durable_recovery_limit = RECOVERY_LIMIT

    def __init__(self, cluster: RedisCluster) -> None:
        super().__init__(cluster)
        self.replicas: dict[int, ClusterNode] = {}  # the replica of each daemon's node (by port), before a kill

    def _reached(self, reached: dict[str, ClusterNode]) -> dict[str, ClusterNode]:
        self.replicas = {node.port: self.cluster.replica_of(node) for node in reached.values()}
        return reached

    @property
    def first(self) -> ClusterNode:
        return next(iter(self.cluster.nodes.values()))

    async def start(self, s: Scenario) -> dict[str, ClusterNode]:
        """The daemons and app B; the node of a and of b."""
        cluster = self.cluster
        if s.mode == "durable":
            owner = cluster.owner(stream_key(s.key, cluster=True))
            await s.start(("a", "b"), {"B": "b"}, daemon_args={label: ["--backend", cluster.uri] for label in "ab"})
            return self._reached({"a": owner, "b": owner})
        ours = cluster.owner(s.key)
        other = next(node for node in cluster.nodes.values() if node is not ours and cluster.is_master(node))
        given = {"a": ours, "b": other}
        await s.start(
            ("a", "b"),
            {"B": "b"},
            daemon_args={label: ["--backend", f"redis+cluster://{node.address}"] for label, node in given.items()},
        )
        return self._reached({"a": ours, "b": ours})

    async def after_kill(self, s: Scenario, victim: ClusterNode, killed: float) -> str:
        """Once the cluster has promoted the victim's replica, start the victim again (it rejoins as a replica),
        then the rest of the stream."""
        moved = now()
        await asyncio.to_thread(self.cluster.wait_promoted, self.replicas[victim.port])
        promoted = now()
        await asyncio.to_thread(self.cluster.wait_whole)
        back = now()
        await s.stream(AFTER_KILL)
        return (
            f"daemons moved {moved - killed:.1f}s, replica promoted {promoted - killed:.1f}s, "
            f"old master back as a replica {back - killed:.1f}s after the kill"
        )

    def whole(self) -> None:
        self.cluster.wait_whole()


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisFaults:
    return RedisFaults(redis_cluster)


# In both modes both daemons are on the master of the key's slot: case 10 is also the receiver's node.
test_a_daemons_node_killed = node_killed("10", "11", receiver_modes=())
