"""Faults mid-stream, counted: real brokers, real daemons (child processes), apps streaming at 1,000 events/s.

Instance `a` carries the publishing app; `b` and `c` carry receiving apps.
Every test counts, per receiving app, what was sent (acked to the publisher),
received, lost, duplicated and reordered, and how long after the fault's end
the first event arrived; the session prints the table (tests/faults/report.py).

Durable mode must lose and duplicate nothing at the app (cases 1-4). Broadcast
mode may lose what was published during the fault, but the daemons stay up,
once an event published after the fault has arrived all later ones do, and the apps
and metrics are told: status frames, `syncar_backend_reconnects_total`,
`syncar_events_dropped_total`, `resume_gap`.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.apps import ExternalReceiver, now
from tests.faults.harness import Scenario, fault_case
from tests.faults.report import RECOVERY_LIMIT, Row
from tests.utils import wait_for

#: A broker or a network path is noticed to be gone within this (Redis PINGs an idle link every 0.5 s).
NOTICE_TIMEOUT = 15.0
SLOW_LATENCY = 0.1  # seconds added each way while the network is slowed
STALL = 10.0  # seconds the slow app reads nothing
OUTBOX_BYTES = 600 * 1024  # case 1: about 600 events of the stream (1 KiB each as sidecar/outbox.py counts them)

pytestmark = pytest.mark.timeout(150)


def told_down_then_up(s: Scenario, label: str) -> bool:
    states = s.watches[label].broker_states()
    return "down" in states and "up" in states[states.index("down") :]


def check(s: Scenario, rows: dict[str, Row], *, lost_broker: tuple[str, ...], unaffected: tuple[str, ...] = ()) -> None:
    """The promises of each mode (module docstring). `lost_broker`: daemons whose broker link went away;
    `unaffected`: apps the fault must not touch in either mode."""
    for label, instance in s.instances.items():
        assert instance.alive, f"syncar {label} died:\n{instance.daemon.log[-3000:]}"
    for row in rows.values():
        assert row.reordered == 0, f"events of one origin out of order: {row}"
    for name in unaffected:
        assert (rows[name].lost, rows[name].duplicated) == (0, 0), rows[name]
    for label in lost_broker:
        assert s.metric(label, "syncar_backend_reconnects_total") >= 1, f"{label}: reconnect not counted"
        assert told_down_then_up(s, label), f"{label}: apps not told: {s.watches[label].broker_states()}"
        for name, row in rows.items():
            if s.receiver_labels[name] == label:
                assert row.recovery is not None and row.recovery <= RECOVERY_LIMIT, f"no recovery: {row}"
    # A publish the outbox could not hold is refused with a nack and counted, never dropped silently.
    refused = s.metric(s.publisher_label, 'syncar_events_dropped_total{reason="outbox_full"}')
    assert len(s.pub.refused) == refused and set(s.pub.refused.values()) <= {"outbox_full"}, s.pub.refused
    if s.mode == "durable":
        assert s.unacked == 0, f"{s.unacked} publishes never acked: {s.pub.unacked_ids()}"
        for row in rows.values():
            assert (row.lost, row.duplicated) == (0, 0), row
    else:
        for row in rows.values():
            assert row.late_lost == 0, f"events published after the path was back were lost: {row}"


@fault_case("1")
async def test_broker_killed_and_restarted(scenario: Scenario) -> None:
    s = scenario
    # a's outbox holds about 600 events: the outage outlasts it, so some publishes must be refused (nack).
    await s.start(("a", "b"), {"B": "b"}, daemon_args={"a": ["--outbox-bytes", str(OUTBOX_BYTES)]})
    await s.stream(1000)
    await asyncio.to_thread(s.server.kill)
    await wait_for(
        lambda: all("down" in w.broker_states() for w in s.watches.values()),
        NOTICE_TIMEOUT,
        "both daemons to tell their apps that the broker is down",
    )
    await s.stream(1000)
    await asyncio.to_thread(s.server.start)
    fault_end = now()
    await s.stream(3000)
    await s.finish()
    rows = s.count(fault_end)
    rows["B"].note(f"publisher: {len(s.pub.refused)} nacked outbox_full")
    check(s, rows, lost_broker=("a", "b"))
    assert s.pub.refused, "the outbox never filled: the test did not exercise nacks"


@fault_case("2")
async def test_receiving_syncar_killed_and_restarted(scenario: Scenario) -> None:
    s = scenario
    await s.start(("a", "b", "c"), {"B": "b", "C": "c"})
    await s.stream(1000)
    s.instances["b"].kill()
    await s.stream(1000)
    await s.instances["b"].restart()  # same instance id, same socket: B's app reconnects to it
    fault_end = now()
    await s.stream(3000)
    await s.finish()
    rows = s.count(fault_end)
    check(s, rows, lost_broker=(), unaffected=("C",))
    if s.mode == "broadcast":
        # The app is told plainly that it missed events: its resume cannot be served by a new run of the daemon.
        assert s.receivers["B"].gaps >= 1


@fault_case("3")
async def test_publishing_syncar_killed_and_restarted(scenario: Scenario) -> None:
    s = scenario
    await s.start(("a", "b"), {"B": "b"})
    await s.stream(1000)
    s.instances["a"].kill()
    await s.stream(1000)  # the publisher's client holds these until its daemon is back
    await s.instances["a"].restart()
    fault_end = now()
    await s.stream(3000)
    await s.finish()
    check(s, s.count(fault_end), lost_broker=())
    # In either mode the client keeps what the dead daemon never acknowledged and sends it again.
    assert s.unacked == 0, f"{s.unacked} publishes were never acknowledged: {s.pub.unacked_ids()}"


@fault_case("4")
async def test_network_cut_restored_and_slowed(scenario: Scenario) -> None:
    s = scenario
    # a (publisher) and b reach the broker through proxies; c goes direct. b is cut off first, so it misses what a
    # still publishes; then a too, so its outbox must hold the rest; both links come back together, then are slowed.
    await s.start(("a", "b", "c"), {"B": "b", "C": "c"}, proxied=("a", "b"))
    await s.stream(1000)
    for label in ("b", "a"):
        s.proxies[label].cut()
        watch = s.watches[label]
        await wait_for(
            lambda: "down" in watch.broker_states(),  # noqa: B023 - awaited at once
            NOTICE_TIMEOUT,
            f"{label} to tell its apps that the broker is down",
        )
        await s.stream(1000)
    for proxy in s.proxies.values():
        proxy.restore()
    fault_end = now()
    await s.stream(1000)
    for proxy in s.proxies.values():
        proxy.latency = SLOW_LATENCY
    slow_start = now()
    await s.stream(2000)
    for proxy in s.proxies.values():
        proxy.latency = 0.0
    slow_end = now()
    await s.stream(1500)
    await s.finish()
    rows = s.count(fault_end)
    for name, row in rows.items():
        row.note(f"max delay while slowed {s.max_delay(name, slow_start, slow_end):.2f}s")
    # c stayed connected: what a's outbox held and sent later reaches it, in either mode.
    check(s, rows, lost_broker=("a", "b"), unaffected=("C",))
    assert all(proxy.refused >= 1 for proxy in s.proxies.values()), "no reconnect attempt was made during the cut"
    for label in s.proxies:
        # One reconnect, after the cut: a slow link is not a lost one.
        assert s.metric(label, "syncar_backend_reconnects_total") == 1, label


@fault_case(
    "5",
    brokers=("redis",),
    why_not="the slow-client policy is the daemon's, the same on every broker; "
    "run on redis only to keep the suite short",
)
async def test_app_stops_reading_for_10_seconds(scenario: Scenario) -> None:
    s = scenario
    # b: a small send queue, so the policy acts within a second or two of the stall; a replay buffer that covers it.
    await s.start(
        ("a", "b", "c"),
        {"slow": "b", "steady": "b", "C": "c"},
        daemon_args={"b": ["--client-queue-bytes", "65536", "--replay-events", "20000"]},
        stalling={"slow": (1000, STALL)},
    )
    slow = s.receivers["slow"]
    await s.stream(1000)
    await wait_for(lambda: len(slow.records) >= 1000, 10, "the slow app to get its first 1000 events")
    stall_start = now()
    await s.stream(int(STALL * 1000))
    await wait_for(lambda: len(slow.records) > 1000, 10, "the slow app to read again")
    await s.stream(2000)
    await s.finish()
    assert isinstance(slow, ExternalReceiver)
    fault_end = slow.stalled[1]
    rows = s.count(fault_end)
    caught_up = slow.caught_up(s.pub, fault_end)
    rows["slow"].note("never caught up" if caught_up is None else f"caught up {caught_up:.2f}s after its stall")
    check(s, rows, lost_broker=(), unaffected=("slow", "steady", "C"))
    # At least once: a resume whose replay is bigger than --client-queue-bytes is cut off again (see docs).
    assert s.metric("b", 'syncar_client_disconnects_total{reason="slow_client"}') >= 1, "the slow app was not cut off"
    assert slow.gaps == 0, "the resume was not served from the replay buffer"
    delays = {name: s.max_delay(name, stall_start, fault_end) for name in ("steady", "C")}
    for name, delay in delays.items():
        rows[name].note(f"max delay during the stall {delay:.2f}s")
    for name, delay in delays.items():
        assert delay < 1.0, f"{name} waited {delay:.2f}s for an event while another app stalled"
