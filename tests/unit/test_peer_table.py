"""The peer table's arithmetic: lag, departures, bounds (sidecar/peer_table.py); the daemons' side is tests/contract."""

from __future__ import annotations

import msgspec
import pytest

from sidecar import peer_table
from sidecar.fleet import Announcement
from sidecar.gaps import Gap, GapReason, GapTracker
from sidecar.peer_table import PeerTable
from sidecar.probe import format_table


def announcement(instance: str = "b", seq: int = 0, run: str | None = "r1", **changes: object) -> Announcement:
    base = Announcement(1, instance, "0.1.0", "syncar", "broadcast", seq, 1000.0, 5.0, run)
    return msgspec.structs.replace(base, **changes)


def test_lag_counts_what_the_peer_sent_since_first_heard_that_did_not_arrive() -> None:
    gaps = GapTracker()
    table = PeerTable("a", gaps)
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
    table = PeerTable("a", GapTracker())
    table.heard(announcement("b"), now=0.0)
    table.heard(announcement("c"), now=0.0)
    assert table.sweep(now=15.0) == []  # three intervals of 5 s: not yet missed a third
    table.heard(announcement("c"), now=14.0)
    assert table.sweep(now=15.1) == ["b"]
    assert table.heard(announcement("c", leaving=True), now=16.0) is False
    assert len(table) == 0


def test_an_announced_seq_still_not_heard_later_is_told_as_a_gap_once() -> None:
    gaps = GapTracker()
    told: list[Gap] = []
    table = PeerTable("a", gaps, tell=told.append, grace=5.0)
    table.heard(announcement(seq=100), now=0.0)  # first heard at 100: those were sent before we listened
    gaps.heard("b", "r1", 101, 20)
    table.heard(announcement(seq=130), now=5.0)  # 121-130 not heard yet: their batches may still be on the way
    assert told == []
    gaps.heard("b", "r1", 121, 5)  # 121-125 came meanwhile: a subscriber behind, still taking them
    table.heard(announcement(seq=130), now=10.0)
    assert told == []
    table.heard(announcement(seq=130), now=15.0)  # nothing more came: what is still not heard is lost
    assert [(g.origin, g.first, g.last, g.reason) for g in told] == [("b", 126, 130, GapReason.LOST)]
    assert table.rows(now=15.0)[0][2] == 0  # told, then counted as heard
    table.sweep(now=15.0)  # the seq of 10.0, looked at again: told once
    table.heard(announcement(seq=140), now=16.0)
    table.heard(announcement(seq=140), now=20.0)
    assert [(g.first, g.last) for g in told[1:]] == [(131, 140)]
    # Leaving: settled `grace` after it, at a sweep.
    table.heard(announcement(seq=150, leaving=True), now=21.0)
    assert len(told) == 2 and table.sweep(now=25.9) == [] and len(told) == 2
    table.sweep(now=26.0)
    assert [(g.first, g.last) for g in told[2:]] == [(141, 150)]
    table.sweep(now=40.0)
    assert len(told) == 3
    # Gone silent (swept), or replaced by a new run of it: its last announcement is settled too.
    table.heard(announcement("c", seq=0), now=30.0)
    table.heard(announcement("c", seq=9), now=35.0)
    assert table.sweep(now=50.1) == ["c"]
    table.heard(announcement("d", seq=0), now=50.0)
    table.heard(announcement("d", seq=4), now=51.0)
    table.heard(announcement("d", seq=0, run="r2"), now=52.0)
    table.sweep(now=57.0)
    assert [(g.origin, g.first, g.last) for g in told[3:]] == [("c", 1, 9), ("d", 1, 4)]
    # A peer in the other mode is heard, but its events never come here (a mismatch warned of): no gap.
    for now, seq in ((60.0, 0), (61.0, 9), (62.0, 9)):
        table.heard(announcement("e", seq=seq, mode="durable"), now=now)
    table.sweep(now=100.0)
    assert len(told) == 5


def test_without_tell_a_lag_is_only_a_lag() -> None:
    gaps = GapTracker()
    table = PeerTable("a", gaps)  # durable mode: a backlog still to be read
    for now, seq in ((0.0, 0), (5.0, 30), (10.0, 30)):
        table.heard(announcement(seq=seq), now=now)
    table.heard(announcement(seq=30, leaving=True), now=11.0)
    table.sweep(now=100.0)
    assert gaps.last("b", "r1") is None


def test_the_table_is_bounded_and_forgets_the_least_recently_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_table, "MAX_PEERS", 3)
    table = PeerTable("a", GapTracker())
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
