"""Fault cases on broker clusters, counted like tests/faults/test_faults.py: a node killed, the cluster fails over.

Case 6, Redis Sentinel: both daemons are connected to the master (there is one); it is killed with SIGKILL, the
sentinels promote the replica (down-after-milliseconds 1000), and the old master comes back as its replica. Through
a failover durable mode acknowledges an event only once a replica has it (WAIT), so it loses and duplicates nothing
at the apps; broadcast mode loses what was published while there was no master, and counts it.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.brokers.redis_sentinel import SentinelGroup
from tests.faults.apps import now
from tests.faults.harness import Scenario, fault_case
from tests.faults.test_faults import check

pytestmark = [pytest.mark.timeout(150), pytest.mark.cluster]


@fault_case(
    "6",
    brokers=("redis",),
    why_not="Redis Sentinel only; the RabbitMQ and NATS cluster cases are their own",
    server="sentinel",
)
async def test_sentinel_master_killed(scenario: Scenario) -> None:
    s = scenario
    group = s.server
    assert isinstance(group, SentinelGroup)
    await s.start(("a", "b"), {"B": "b"})
    await s.stream(1000)
    killed = now()
    took = await asyncio.to_thread(group.fail_over)  # returns once the old master is a replica of the new one
    await s.stream(3000)
    await s.finish()
    rows = s.count(killed)  # recovery: from the kill, through the sentinels' detection and failover
    rows["B"].note(
        f"sentinels named a new master {took:.1f}s after the kill; max delay of an event published "
        f"before then {s.max_delay('B', killed, killed + took):.2f}s"
    )
    check(s, rows, lost_broker=("a", "b"))
    for label in ("a", "b"):  # each daemon landed on the new master, and said so
        assert s.metric(label, "syncar_broker_failovers_total") == 1, label
