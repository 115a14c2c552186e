"""The peer table: the daemons heard announcing on the key (sidecar/fleet.py), when, and the sequence lag: how many
of a peer's events, by its last announcement, have not reached this daemon since it first heard of that run. A peer
is gone after `MISSED` announcements missed. The table is bounded (MAX_PEERS, least recently heard forgotten first)
and read by `GET /peers`, `syncar peers` and the metrics.

In broadcast mode, where an announcement cannot overtake the batches before it (`Feature.IN_ORDER`), a lag that
outlasts the time its events had to arrive is a loss, told as the gaps that batches reveal are (sidecar/gaps.py):
the last events of a run that nothing more is heard of show no jump in any batch. An announcement's `seq` is
settled, not when it arrives, but at the peer's next announcement of that run, one of our intervals after it said
it was leaving, or when it is swept; later while batches of that run still arrive (a subscriber behind). Where it
can overtake them (RabbitMQ: another queue), nothing is told here: the mark the peer puts on the key tells it
(sidecar/fleet.py). In durable mode a lag is a backlog still to be read.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends.base import Mode
from sidecar.gaps import Gap, GapTracker

if TYPE_CHECKING:
    from sidecar.fleet import Announcement

#: Announcements a peer may miss before it is gone; intervals of silence before our subscription counts as lost.
MISSED = 3
#: Peers kept at once; beyond it the least recently heard is forgotten (and comes back when heard again).
MAX_PEERS = 1024


@dataclass(slots=True)
class Peer:
    announcement: Announcement
    heard_at: float  # time.monotonic() of its last announcement
    since_seq: int  # its seq when this run of it was first heard: what it sent before is not our loss
    heard: int | None = None  # the last seq of its run heard here when the announcement came


class PeerTable:
    """The peers heard on the key, bounded, and what `gaps` heard of their runs. With `tell` (broadcast mode), the
    events an announcement said were on the bus and that were not heard once they had their time are a gap told;
    `grace` is that time after a peer's last announcement (our announcement interval)."""

    def __init__(
        self, instance_id: str, gaps: GapTracker, *, tell: Callable[[Gap], None] | None = None, grace: float = 0.0
    ) -> None:
        self.instance_id = instance_id
        self._gaps, self._tell, self._grace = gaps, tell, grace
        self._peers: OrderedDict[str, Peer] = OrderedDict()  # least recently heard first
        # Runs whose last announcement is not settled yet (with `tell` only): they left, or a new run replaced them.
        self._departed: OrderedDict[tuple[str, str], Peer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def heard(self, announcement: Announcement, now: float) -> bool:
        """Take an announcement of another daemon; True if it is new (first heard, or a new run of it)."""
        instance, peers = announcement.instance, self._peers
        peer = peers.pop(instance, None)
        if peer is None or peer.announcement.run != announcement.run:
            new, since = True, announcement.seq
            if peer is not None:
                self._depart(peer)
        else:
            new, since = False, peer.since_seq
            self._settle(peer, now)  # the next announcement of its run: the batches before the last one had their time
        if announcement.leaving:
            self._depart(Peer(announcement, now, since, self._heard(announcement)))
            return False
        peers[instance] = Peer(announcement, now, since, self._heard(announcement))
        while len(peers) > MAX_PEERS:
            peers.popitem(last=False)
        return new

    def sweep(self, now: float) -> list[str]:
        """Forget the peers that missed MISSED announcements (their ids), settle the departures past `grace`."""
        gone = [i for i, p in self._peers.items() if now - p.heard_at > MISSED * p.announcement.interval]
        for instance in gone:
            self._settle(self._peers.pop(instance), now)
        due = [run for run, p in self._departed.items() if now - p.heard_at >= self._grace]
        for run in due:
            self._settle(self._departed.pop(run), now)
        return gone

    def _depart(self, peer: Peer) -> None:
        run = self._followed(peer.announcement)
        if self._tell is not None and run is not None:
            key = (peer.announcement.instance, run)
            self._departed.pop(key, None)
            self._departed[key] = peer
            while len(self._departed) > MAX_PEERS:
                self._departed.popitem(last=False)

    def _heard(self, a: Announcement) -> int | None:
        return None if a.run is None else self._gaps.last(a.instance, a.run)

    @staticmethod
    def _followed(a: Announcement) -> str | None:
        """`a`'s run, if the events it says were on the bus should have reached us: not those of a peer in another
        mode (a mismatch warned of: its events go elsewhere), nor of one without a run (it does not number them)."""
        return a.run if a.mode == Mode.BROADCAST else None

    def _settle(self, peer: Peer, now: float) -> None:
        """The peer's announcement had its time: the events it said were on the bus and were not heard are lost
        (counted as heard from then on, so that no gap is told twice), unless some are still arriving."""
        a, run = peer.announcement, self._followed(peer.announcement)
        if self._tell is None or run is None:
            return
        heard = self._gaps.last(a.instance, run)
        if heard != peer.heard and (heard or 0) < a.seq:
            # Batches of its run came meanwhile: a subscriber behind, still taking them. Looked at again later.
            self._depart(dataclasses.replace(peer, heard_at=now, heard=heard))
            return
        gap = self._gaps.announced(a.instance, run, a.seq, peer.since_seq)
        if gap is not None:
            self._tell(gap)

    def lag(self, peer: Peer) -> int | None:
        """Events of the peer's run, by its last announcement, not received here; None if its codec has no seqs."""
        a = peer.announcement
        if a.run is None:
            return None
        heard = self._gaps.last(a.instance, a.run) or 0
        return max(a.seq - max(heard, peer.since_seq), 0)

    def instances(self) -> list[str]:
        """The instance ids of the peers in the table."""
        return list(self._peers)

    def rows(self, now: float) -> list[tuple[Peer, float, int | None]]:
        """Each peer, the seconds since it was heard and its lag; most recently heard first."""
        return [(p, max(now - p.heard_at, 0.0), self.lag(p)) for p in reversed(self._peers.values())]
