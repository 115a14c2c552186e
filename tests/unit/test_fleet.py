"""The peer table's arithmetic: lag, departures, bounds (sidecar/fleet.py); the daemons' side is tests/contract."""

from __future__ import annotations

import msgspec
import pytest

from sidecar import fleet
from sidecar.fleet import Announcement, PeerTable
from sidecar.gaps import GapTracker
from sidecar.probe import format_table


def announcement(instance: str = "b", seq: int = 0, run: str | None = "r1", **changes: object) -> Announcement:
    base = Announcement(1, instance, "0.1.0", "syncar", "broadcast", seq, 1000.0, 5.0, run)
    return msgspec.structs.replace(base, **changes)


def test_lag_counts_what_the_peer_sent_since_first_heard_that_did_not_arrive() -> None:
    gaps = GapTracker()
    table = PeerTable("a", gaps.last)
    # First heard at seq 100: those 100 were sent before we listened, not our loss.
    assert table.heard(announcement(seq=100), now=0.0) is True
    [(_, _, lag)] = table.rows(now=0.0)
    assert lag == 0
    table.heard(announcement(seq=130), now=5.0)
    assert table.rows(now=5.0)[0][2] == 30  # 30 announced, none received
    gaps.heard("b", "r1", 101, 25)  # events 101-125 arrived
    assert table.rows(now=5.0)[0][2] == 5
    # A new run of it starts over: not new information about losses, and it is news (checked again for mismatches).
    assert table.heard(announcement(seq=3, run="r2"), now=6.0) is True
    assert table.rows(now=6.0)[0][2] == 0
    # feathers-sync's batches carry no numbers: no lag to tell.
    table.heard(announcement("c", seq=7, run=None), now=6.0)
    assert {p.announcement.instance: lag for p, _, lag in table.rows(now=6.0)} == {"b": 0, "c": None}


def test_a_peer_is_gone_after_three_missed_announcements_or_at_once_when_leaving() -> None:
    table = PeerTable("a", GapTracker().last)
    table.heard(announcement("b"), now=0.0)
    table.heard(announcement("c"), now=0.0)
    assert table.sweep(now=15.0) == []  # three intervals of 5 s: not yet missed a third
    table.heard(announcement("c"), now=14.0)
    assert table.sweep(now=15.1) == ["b"]
    assert table.heard(announcement("c", leaving=True), now=16.0) is False
    assert len(table) == 0


def test_the_table_is_bounded_and_forgets_the_least_recently_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "MAX_PEERS", 3)
    table = PeerTable("a", GapTracker().last)
    for n, name in enumerate("bcde"):
        table.heard(announcement(name), now=float(n))
    table.heard(announcement("c"), now=10.0)
    assert [p.announcement.instance for p, _, _ in table.rows(now=10.0)] == ["c", "e", "d"]


def test_the_table_for_people_lines_up_its_columns() -> None:
    rows = [
        {
            "instance": "web-1",
            "self": True,
            "version": "0.1.0",
            "codec": "syncar",
            "mode": "broadcast",
            "seq": 12,
            "lag": 0,
            "heard_seconds_ago": 0.0,
        },
        {
            "instance": "worker-long-name",
            "self": False,
            "version": "0.1.0",
            "codec": "feathers-sync",
            "mode": "broadcast",
            "seq": 3,
            "lag": None,
            "heard_seconds_ago": 1.3,
        },
    ]
    assert format_table(rows).splitlines() == [
        "  INSTANCE          VERSION  CODEC          MODE       SEQ  LAG  HEARD",
        "* web-1             0.1.0    syncar         broadcast  12   0    self",
        "  worker-long-name  0.1.0    feathers-sync  broadcast  3    -    1.3s ago",
    ]
