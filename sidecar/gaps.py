"""What this daemon missed of each origin's events on the bus (broadcast mode: what the broker never delivered).

Every `syncar` batch says which run of its origin's daemon sent it and the
bus sequence number of its first event (sidecar/codec.py). For each origin the
last number heard is kept; a batch that starts beyond the next one means the
events in between went by unseen. A batch at or below it is a copy (a durable
redelivery, the outbox sending again a batch the broker did not confirm) and
is no gap. A new run of an origin starts again at 1: what came before its
first batch heard is missed of the new run, and what the old run sent after
its last batch heard is known only from its announcements (`announced`).

The last events of a run that nothing more is heard of (its daemon went quiet
or stopped after the receiver missed its last batches) reveal no jump: its
announcements (sidecar/fleet.py) say how many events it put on the bus, and
once they have had time to arrive, what was not heard of them is a gap too,
counted as heard from then on, so that a later batch reveals only what lies
beyond it and no gap is told twice.

Runs and origins are forgotten least recently heard first beyond a bound: one
forgotten and heard again is taken as new, which can only hide a gap, never
invent one.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum

import msgspec

#: Runs (and origins) followed at once: more instances than this on one key only lose the gaps of the least recently
#: heard.
MAX_ORIGINS = 4096


class GapReason(StrEnum):
    LOST = "lost"  # the broker did not deliver them (a cut link, a full buffer, a slow subscriber dropped)
    RESTART = "restart"  # the origin's daemon started again: the first events of its new run were not heard


class Gap(msgspec.Struct, frozen=True):
    origin: str
    run: str
    first: int  # the first and last sequence numbers missed, within `run`
    last: int
    reason: GapReason

    @property
    def missed(self) -> int:
        return self.last - self.first + 1


class ResumeGap(msgspec.Struct, frozen=True):
    """Why a resuming app cannot have everything after its `seq`, and, where it is known, the seqs of this daemon's
    run it will not get (`first` to `last`): they went out of the replay buffer before it came back. Those are all
    the events numbered there, its own and those its subscription would not want among them (which cannot be known
    any more)."""

    why: str
    first: int = 0
    last: int = -1

    @property
    def missed(self) -> int:
        return max(self.last - self.first + 1, 0)

    def fields(self) -> dict[str, int]:
        """What the `resume_gap` error carries of it (docs/protocol.md#resuming): nothing where no count is known."""
        return {"missed": self.missed, "first": self.first, "last": self.last} if self.missed else {}


class GapTracker:
    def __init__(self, max_origins: int = MAX_ORIGINS) -> None:
        self._max_origins = max_origins
        # (origin, run) -> the last seq heard. Per run, not per origin: two daemons wrongly given one instance id
        # (two runs at once) each keep their numbers, instead of every batch of one looking like a restart.
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._origins: OrderedDict[str, None] = OrderedDict()  # origins heard, whatever the run

    def __len__(self) -> int:
        return len(self._last)

    def last(self, origin: str, run: str) -> int | None:
        """The last seq heard of `run` of `origin`, None if none (or forgotten)."""
        return self._last.get((origin, run))

    def heard(self, origin: str, run: str, seq: int, count: int) -> Gap | None:
        """A batch of `count` events numbered from `seq` in `run` of `origin`: the gap it reveals, if any."""
        end = seq + count - 1
        table, key = self._last, (origin, run)
        last = table.get(key)
        if last is not None:  # the common case, once per broker message: kept short
            table.move_to_end(key)
            self._origins.move_to_end(origin)
            if end > last:
                table[key] = end
            return Gap(origin, run, last + 1, seq - 1, GapReason.LOST) if seq > last + 1 else None
        self._last[origin, run] = end
        known = self._origins.pop(origin, False) is None
        self._origins[origin] = None
        while len(self._last) > self._max_origins:
            self._last.popitem(last=False)
        while len(self._origins) > self._max_origins:
            self._origins.popitem(last=False)
        # An origin never heard (or forgotten): what it sent before is none of our business, whatever its number.
        return Gap(origin, run, 1, seq - 1, GapReason.RESTART) if known and seq > 1 else None

    def announced(self, origin: str, run: str, seq: int, since: int) -> Gap | None:
        """`run` of `origin` had put `seq` events on the bus, by an announcement old enough for all of them to have
        arrived: the gap a batch numbered from `seq + 1` would reveal, whose events then count as heard. Of an origin
        never heard (or forgotten), what came after `since` (its seq when the fleet first heard of the run) is missed.
        """
        unknown = (origin, run) not in self._last and origin not in self._origins
        gap = self.heard(origin, run, seq + 1, 0)
        return Gap(origin, run, since + 1, seq, GapReason.LOST) if unknown and seq > since else gap
