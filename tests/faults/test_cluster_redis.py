"""Failovers of a real 6-node Redis Cluster (tests/brokers/redis_cluster.py, cluster-node-timeout 1500 ms) under
1,000 events/s, counted in the fault suite's table (cases 10-11).

Broadcast mode connects to any node: daemon `a` (the publisher's) is given the master of the key's slot only,
`b` (the receiver's) the master of another slot only; each learns the other nodes from the cluster. Durable mode
connects both daemons to the master of the slot of the key's stream, which holds the stream: killing it is at once
case 10 (the publisher's node), the receiver's node and the node holding the data, so it is one durable row.

Durable mode must lose and duplicate nothing an app got an ack for (WAIT for a replica). Broadcast mode loses what
was in flight on the dead node, counts it (gap frames, syncar_events_missed_total), tells the apps (`status`), and
every event published once the path is back arrives. The killed node comes back as a replica before the rest of
the stream: durable publishes wait for a replica (WAIT 1), and the next test finds the cluster whole.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.redis_streams import stream_key
from tests.brokers.redis_cluster import ClusterNode, RedisCluster
from tests.faults.apps import now
from tests.faults.cluster import counted, fail_over
from tests.faults.harness import Scenario
from tests.faults.test_faults import check

pytestmark = [pytest.mark.redis, pytest.mark.cluster, pytest.mark.faults, pytest.mark.timeout(150)]


@pytest.fixture
async def cluster_scenario(
    request: pytest.FixtureRequest, redis_cluster: RedisCluster, mode: str
) -> AsyncIterator[Scenario]:
    case = request.node.get_closest_marker("case")
    assert case is not None
    directory = Path(tempfile.mkdtemp(prefix="syncar-cluster-", dir="/tmp"))
    first = next(iter(redis_cluster.nodes.values()))
    stage = Scenario(case.args[0], "redis cluster", mode, first, directory, f"cluster-{uuid.uuid4().hex[:12]}")
    try:
        yield stage
    finally:
        await stage.close()
        await asyncio.to_thread(redis_cluster.wait_whole)  # the next test finds all six


async def start(s: Scenario, cluster: RedisCluster) -> tuple[ClusterNode, ClusterNode]:
    """The daemons and app B; returns the node of a and of b."""
    if s.mode == "durable":
        owner = cluster.owner(stream_key(s.key, cluster=True))
        await s.start(("a", "b"), {"B": "b"}, daemon_args={label: ["--backend", cluster.uri] for label in "ab"})
        return owner, owner
    ours = cluster.owner(s.key)
    other = next(node for node in cluster.nodes.values() if node is not ours and cluster.is_master(node))
    await s.start(
        ("a", "b"),
        {"B": "b"},
        daemon_args={
            "a": ["--backend", f"redis+cluster://{ours.address}"],
            "b": ["--backend", f"redis+cluster://{other.address}"],
        },
    )
    return ours, other


async def kill(s: Scenario, cluster: RedisCluster, victim: ClusterNode, labels: tuple[str, ...]) -> tuple[float, str]:
    """SIGKILL `victim` (a master); once daemons `labels` are up on another node and the cluster has promoted the
    victim's replica, start the victim again (it rejoins as a replica). Returns the time of the kill, and a note
    of when the daemons moved, the replica was promoted and the victim was back."""
    replica = cluster.replica_of(victim)
    killed = await fail_over(s, victim, labels)
    moved = now()
    await asyncio.to_thread(cluster.wait_promoted, replica)
    promoted = now()
    await asyncio.to_thread(cluster.wait_whole)
    return killed, (
        f"daemons moved {moved - killed:.1f}s, replica promoted {promoted - killed:.1f}s, "
        f"old master back as a replica {now() - killed:.1f}s after the kill"
    )


@pytest.mark.case("10")
@pytest.mark.parametrize("mode", ["broadcast", "durable"])
async def test_the_keys_master_killed(cluster_scenario: Scenario, redis_cluster: RedisCluster) -> None:
    s = cluster_scenario
    node_a, _ = await start(s, redis_cluster)
    await s.stream(1000)
    labels = ("a", "b") if s.mode == "durable" else ("a",)
    killed, note = await kill(s, redis_cluster, node_a, labels)
    await s.stream(3000)
    await s.finish()
    rows = counted(s, killed, labels, node_a)
    delay = s.max_delay("B", killed, killed + 5)
    rows["B"].note(f"{note}; max delay of an event published in the 5 s after {delay:.2f}s")
    check(s, rows, lost_broker=labels)
    assert s.metric("b", "syncar_events_missed_total") == rows["B"].lost


@pytest.mark.case("11")
@pytest.mark.parametrize("mode", ["broadcast"])
async def test_the_receivers_node_killed(cluster_scenario: Scenario, redis_cluster: RedisCluster) -> None:
    s = cluster_scenario
    _, node_b = await start(s, redis_cluster)
    await s.stream(1000)
    killed, note = await kill(s, redis_cluster, node_b, ("b",))
    await s.stream(3000)
    await s.finish()
    rows = counted(s, killed, ("b",), node_b)
    rows["B"].note(note)
    check(s, rows, lost_broker=("b",))
    assert s.metric("b", "syncar_events_missed_total") == rows["B"].lost
