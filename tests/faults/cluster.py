"""What the cluster fault cases share (NATS cases 7-9, Redis Cluster 10-11, RabbitMQ 12-14): kill a node under a
stream, wait for the daemons on it to tell their apps they are up on another node, and check what they counted.

Each broker's test module says only what is its own, in a `ClusterFaults` subclass given by its `cluster` fixture:
the node the Scenario names, where the daemons start, what the cluster does after a kill, how it is made whole for
the next test. The case "a daemon's node killed" (the publisher's, `a`, or the receiver's, `b`) is one test, made
for each module by `node_killed` with that broker's case numbers; the one fixture `cluster_scenario` is in
tests/faults/conftest.py.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar, Generic, TypeVar

import pytest

from tests.brokers import BrokerServer
from tests.faults.apps import now
from tests.faults.harness import MODES, Scenario
from tests.faults.report import RECOVERY_LIMIT, Row
from tests.faults.test_faults import NOTICE_TIMEOUT, check, told_down_then_up
from tests.utils import wait_for

#: Durable mode waits for the cluster to elect new leaders: NATS for the stream and the consumers, then for the
#: consumer's silence to be noticed (nats_consumer.SILENCE) and its resume, measured 12 s; RabbitMQ for the quorum
#: queues. Asserted with room for a busy machine.
DURABLE_RECOVERY_LIMIT = 40.0
C = TypeVar("C")  # the cluster the session started (tests/brokers)
N = TypeVar("N", bound=BrokerServer)  # that cluster's nodes
#: The events published after a kill, while the cluster fails over (and, for some brokers, the node comes back).
AFTER_KILL = 3000


class ClusterFaults(ABC, Generic[C, N]):
    """One broker's `cluster` as the cluster cases use it: only what differs from one broker to another."""

    broker: ClassVar[str]  # the fault table's broker column, e.g. "nats cluster"
    #: Durable mode's bound on recovery: DURABLE_RECOVERY_LIMIT where the cluster elects leaders.
    durable_recovery_limit: ClassVar[float] = DURABLE_RECOVERY_LIMIT

    def __init__(self, cluster: C) -> None:
        self.cluster = cluster

    @property
    @abstractmethod
    def first(self) -> N:
        """The node the Scenario names as its server."""

    @abstractmethod
    async def start(self, s: Scenario) -> dict[str, N]:
        """Start daemons `a` and `b` and app B on b, once the cluster is ready; the node each daemon is on."""

    @abstractmethod
    async def after_kill(self, s: Scenario, victim: N, killed: float) -> str:
        """What the cluster needs once `victim` was killed at `killed`, with AFTER_KILL events published meanwhile;
        a note for the rows (how long it took)."""

    async def clear(self, s: Scenario) -> None:
        """Remove what test `s` left on the cluster that a node it killed must not be brought back to; called once its
        daemons are stopped, before `whole()`. Nothing, unless the broker's module says otherwise."""

    @abstractmethod
    def whole(self) -> None:
        """Every node running again, for the next test."""

    def recovery_limit(self, mode: str) -> float:
        return RECOVERY_LIMIT if mode == "broadcast" else self.durable_recovery_limit


def address(node: BrokerServer) -> str:
    """What a daemon names as its node: `127.0.0.1:port`."""
    return f"127.0.0.1:{node.port}"


def nodes_named(s: Scenario, label: str) -> list[str]:
    """The `node` of each `status` frame daemon `label` sent while up."""
    return [str(f["node"]) for _, f in s.watches[label].frames if f.get("type") == "status" and "node" in f]


def on(reached: Mapping[str, BrokerServer], victim: BrokerServer) -> tuple[str, ...]:
    """The daemons connected to `victim`."""
    return tuple(label for label, node in reached.items() if node is victim)


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


def counted(
    s: Scenario, fault_end: float, labels: tuple[str, ...], victim: BrokerServer, limit: float
) -> dict[str, Row]:
    """The rows, once daemons `labels` are checked to have counted the failover, left the victim and told their apps;
    each row's recovery within `limit`."""
    rows = s.count(fault_end)
    for label in labels:
        assert s.metric(label, "syncar_broker_failovers_total") >= 1, f"{label}: failover not counted"
        assert s.metric(label, "syncar_backend_reconnects_total") >= 1, f"{label}: reconnect not counted"
        assert s.metric(label, f'syncar_broker_node_info{{node="{address(victim)}"}}') == 0
        assert told_down_then_up(s, label), f"{label}: apps not told: {s.watches[label].broker_states()}"
    for row in rows.values():
        row.note(
            f"failovers a {s.metric('a', 'syncar_broker_failovers_total'):.0f}, "
            f"b {s.metric('b', 'syncar_broker_failovers_total'):.0f}"
        )
        assert row.recovery is not None and row.recovery <= limit, row
    return rows


async def kill_a_node(
    s: Scenario, cluster: ClusterFaults[C, N], reached: Mapping[str, N], victim: N, what: str = ""
) -> dict[str, Row]:
    """Kill `victim` under the stream, let the cluster do what it does after a kill, and check the counts: the
    daemons on the victim failed over, durable mode lost nothing acked, and what broadcast mode lost is exactly
    what b counted as missed. `what` says on each row why this node (besides whose it was)."""
    labels = on(reached, victim)
    killed = await fail_over(s, victim, labels)
    note = await cluster.after_kill(s, victim, killed)
    # Durable mode's promise on a cluster is delivery within its recovery limit (the cluster elects leaders first):
    # what is still on its way when the usual settle time ends is late, not lost, until that limit.
    await s.finish(cluster.recovery_limit(s.mode) if s.mode == "durable" else None)
    rows = counted(s, killed, labels, victim, cluster.recovery_limit(s.mode))
    whose = f"the node of {' and '.join(labels)}" if labels else ""
    delay = s.max_delay("B", killed, killed + 5)
    for row in rows.values():
        for text in (note, whose, what, f"max delay of an event published in the 5 s after {delay:.2f}s"):
            row.note(text)
    # counted() held the daemons on the victim to the mode's recovery limit, which is this broker's own.
    check(s, rows, lost_broker=())
    assert s.metric("b", "syncar_events_missed_total") == rows["B"].lost, "a loss not counted as a gap"
    return rows


def node_killed(
    publisher: str, receiver: str, *, receiver_modes: tuple[str, ...] = MODES
) -> Callable[..., Awaitable[None]]:
    """The case of a daemon's node killed, as cases `publisher` (a's node) and `receiver` (b's node) of one broker.
    Its test module collects it: `test_a_daemons_node_killed = node_killed("7", "8")`, and gives the `cluster`."""
    params = [
        *(pytest.param("a", mode, marks=pytest.mark.case(publisher), id=f"publishing-{mode}") for mode in MODES),
        *(pytest.param("b", mode, marks=pytest.mark.case(receiver), id=f"receiving-{mode}") for mode in receiver_modes),
    ]

    @pytest.mark.parametrize(("whose", "mode"), params)
    async def test_a_daemons_node_killed(cluster_scenario: Scenario, cluster: ClusterFaults[C, N], whose: str) -> None:
        s = cluster_scenario
        reached = await cluster.start(s)
        await s.stream(1000)
        await kill_a_node(s, cluster, reached, reached[whose])

    return test_a_daemons_node_killed
