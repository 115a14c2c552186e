"""Failovers of a real 3-node NATS cluster (tests/brokers/nats.py NatsCluster) under 1,000 events/s, counted in the
fault suite's table (cases 7-9): daemon `a` (the publisher's) is given node 1 only, `b` (the receiver's) node 2
only; each follows the servers the cluster announces. Durable mode's stream has 3 replicas (`?replicas=3`).

Durable mode must lose and duplicate nothing an app got an ack for. Broadcast mode loses what was in flight on
the dead node; the daemons reconnect to a live node, count the failover, tell their apps (`status` frames with the
new `node`), and every event published once the path is back arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest

from backends.nats_jetstream import jetstream_name
from tests.brokers.nats import NatsCluster, NatsClusterNode
from tests.faults.apps import now
from tests.faults.cluster import DURABLE_RECOVERY_LIMIT, counted, fail_over, staged
from tests.faults.harness import Scenario
from tests.faults.test_faults import check
from tests.utils import eventually

pytestmark = [pytest.mark.nats, pytest.mark.cluster, pytest.mark.faults, pytest.mark.timeout(150)]
MODES = pytest.mark.parametrize("mode", ["broadcast", "durable"])


@pytest.fixture
async def cluster_scenario(
    request: pytest.FixtureRequest, nats_cluster: NatsCluster, mode: str
) -> AsyncIterator[Scenario]:
    async with staged(request, "nats cluster", mode, nats_cluster.nodes[0], nats_cluster.whole) as stage:
        yield stage


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


async def start(s: Scenario, cluster: NatsCluster) -> None:
    """Daemon a on node 1, b on node 2 (each URI names one node: the others are announced); app B on b.

    A node restarted by the last test says it is healthy before its JetStream answers every request: a daemon's
    first subscribe could time out, and a consumer made later starts after what was published meanwhile."""
    for node in cluster.nodes:
        await eventually(
            lambda node=node: jetstream_answers(node),
            30,
            f"JetStream to answer on node {node.index}",
        )
    replicas = "?replicas=3" if s.mode == "durable" else ""
    first, second = cluster.nodes[0], cluster.nodes[1]
    await s.start(
        ("a", "b"),
        {"B": "b"},
        daemon_args={"a": ["--backend", f"{first.uri}{replicas}"], "b": ["--backend", f"{second.uri}{replicas}"]},
    )


@pytest.mark.case("7")
@MODES
async def test_publishing_daemons_node_killed(cluster_scenario: Scenario, nats_cluster: NatsCluster) -> None:
    s = cluster_scenario
    await start(s, nats_cluster)
    await s.stream(1000)
    victim = nats_cluster.nodes[0]
    fault_end = await fail_over(s, victim, ("a",))
    await s.stream(3000)
    await s.finish()
    check(s, counted(s, fault_end, ("a",), victim), lost_broker=())


@pytest.mark.case("8")
@MODES
async def test_receiving_daemons_node_killed(cluster_scenario: Scenario, nats_cluster: NatsCluster) -> None:
    s = cluster_scenario
    await start(s, nats_cluster)
    await s.stream(1000)
    victim = nats_cluster.nodes[1]
    fault_end = await fail_over(s, victim, ("b",))
    await s.stream(3000)
    await s.finish()
    check(s, counted(s, fault_end, ("b",), victim), lost_broker=())


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
async def test_stream_leader_killed(cluster_scenario: Scenario, nats_cluster: NatsCluster) -> None:
    s = cluster_scenario
    await start(s, nats_cluster)
    await s.stream(1000)
    leader = await stream_leader(nats_cluster, s.key)
    await asyncio.to_thread(leader.kill)
    fault_end = now()
    await s.stream(3000)
    await s.finish()
    rows = s.count(fault_end)
    connected = [
        label for label, node in (("a", nats_cluster.nodes[0]), ("b", nats_cluster.nodes[1])) if node is leader
    ]
    for row in rows.values():
        row.note(f"leader n{leader.index}" + (f", the node of {' and '.join(connected)}" if connected else ""))
        assert row.recovery is not None and row.recovery <= DURABLE_RECOVERY_LIMIT, row
    check(s, rows, lost_broker=())
