"""What the cluster fault cases share (NATS cases 7-9, RabbitMQ cases 10-12): kill a node under a stream, wait for
the daemons on it to tell their apps they are up on another node, and check what they counted."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.brokers import BrokerServer
from tests.faults.apps import now
from tests.faults.harness import Scenario
from tests.faults.report import RECOVERY_LIMIT, Row
from tests.faults.test_faults import NOTICE_TIMEOUT, told_down_then_up
from tests.utils import wait_for

#: Durable mode waits for the cluster to elect new leaders: NATS for the stream and the consumers, then for the
#: consumer's silence to be noticed (nats_consumer.SILENCE) and its resume, measured 12 s; RabbitMQ for the quorum
#: queues. Asserted with room for a busy machine.
DURABLE_RECOVERY_LIMIT = 40.0


@contextlib.asynccontextmanager
async def staged(
    request: pytest.FixtureRequest, broker_name: str, mode: str, node: BrokerServer, whole: Callable[[], None]
) -> AsyncIterator[Scenario]:
    """The Scenario of a cluster case (its number from the test's `case` marker), on the cluster `node` is one node
    of; once the test is over, `whole()` restarts the nodes it killed, so the next test finds them all."""
    case = request.node.get_closest_marker("case")
    assert case is not None
    directory = Path(tempfile.mkdtemp(prefix="syncar-cluster-", dir="/tmp"))
    stage = Scenario(case.args[0], broker_name, mode, node, directory, f"cluster-{uuid.uuid4().hex[:12]}")
    try:
        yield stage
    finally:
        await stage.close()
        await asyncio.to_thread(whole)


def address(node: BrokerServer) -> str:
    """What a daemon names as its node: `127.0.0.1:port`."""
    return f"127.0.0.1:{node.port}"


def nodes_named(s: Scenario, label: str) -> list[str]:
    """The `node` of each `status` frame daemon `label` sent while up."""
    return [str(f["node"]) for _, f in s.watches[label].frames if f.get("type") == "status" and "node" in f]


async def fail_over(s: Scenario, victim: BrokerServer, labels: tuple[str, ...]) -> float:
    """SIGKILL `victim`; wait until daemons `labels` told their apps the broker is up on another node. The kill's
    time is the fault's end: the failover is the daemon's to make."""
    await asyncio.to_thread(victim.kill)
    killed = now()
    gone = address(victim)
    for label in labels:
        await wait_for(
            lambda: any(node != gone for node in nodes_named(s, label)),  # noqa: B023 - awaited at once
            NOTICE_TIMEOUT,
            f"{label} to tell its apps it is up on another node",
        )
    return killed


def counted(s: Scenario, fault_end: float, labels: tuple[str, ...], victim: BrokerServer) -> dict[str, Row]:
    """The rows, once daemons `labels` are checked to have counted the failover, left the victim and told their apps;
    each row's recovery within the mode's limit."""
    rows = s.count(fault_end)
    for label in labels:
        assert s.metric(label, "syncar_broker_failovers_total") >= 1, f"{label}: failover not counted"
        assert s.metric(label, "syncar_backend_reconnects_total") >= 1, f"{label}: reconnect not counted"
        assert s.metric(label, f'syncar_broker_node_info{{node="{address(victim)}"}}') == 0
        assert told_down_then_up(s, label), f"{label}: apps not told: {s.watches[label].broker_states()}"
    limit = RECOVERY_LIMIT if s.mode == "broadcast" else DURABLE_RECOVERY_LIMIT
    for row in rows.values():
        row.note(
            f"failovers a {s.metric('a', 'syncar_broker_failovers_total'):.0f}, "
            f"b {s.metric('b', 'syncar_broker_failovers_total'):.0f}"
        )
        assert row.recovery is not None and row.recovery <= limit, row
    return rows
