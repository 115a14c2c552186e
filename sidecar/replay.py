"""The bounded replay buffer: recent events, so a client that reconnects can resume by `seq`."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import islice

import msgspec

from sidecar import protocol


class Entry(msgspec.Struct, gc=False):  # gc=False: nothing in it can form a cycle, and there are thousands
    """One numbered event. A local client's keeps the event's JSON, not its frame: that JSON goes to the broker, and
    a frame is made only for a client that wants the event (most events are never replayed). One from the broker
    keeps its frame, made at once (`framed`): it is there to be delivered, and nothing else needs its JSON."""

    seq: int
    path: str
    event: str
    source: str | None  # client_id of the local publisher, so it is not replayed its own events
    origin: bytes  # the origin instance as JSON
    part: bytes  # the event as JSON: {id, time, event, path, data, context}; or, if `framed`, its whole frame
    framed: bool = False

    def frame(self) -> bytes:
        return self.part if self.framed else protocol.event(self.seq, self.origin, self.part)


class CatchUp:
    """A resuming client's place in the replay buffer, from which it also gets live events until it catches up."""

    __slots__ = ("cursor", "live_from", "scheduled")

    def __init__(self, cursor: int, live_from: int) -> None:
        self.cursor = cursor  # the last seq handed to the client (or passed over, as not for it)
        self.live_from = live_from  # events after this seq came after the resume: they echo as live ones do
        self.scheduled = False  # a turn of the loop is coming for it


class SharedStrings(dict[str, str]):
    """One copy of each path and event name for the replay buffer's entries: `shared[text]`.

    Thousands of entries share a handful of paths and event names; with strings of their own they scatter the
    allocator's pages (30 MiB more, measured). `sys.intern` did this, but on Python 3.12+ interned strings are never
    freed, so unique paths grew the daemon for good. This table is bounded: at most `max_strings` strings of at most
    `max_length` characters, and it starts over when full (entries keep the strings they have). A dict, so that a
    string seen before costs one lookup in C.
    """

    __slots__ = ("max_length", "max_strings")

    def __init__(self, max_strings: int = 4096, max_length: int = 256) -> None:
        super().__init__()
        self.max_strings = max_strings
        self.max_length = max_length

    def __missing__(self, text: str) -> str:
        if len(text) <= self.max_length:
            if len(self) >= self.max_strings:
                self.clear()
            self[text] = text
        return text


class ReplayBuffer:
    """Keeps the newest events within a count and a byte limit; seqs in it are contiguous."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._entries: deque[Entry] = deque()
        self.bytes = 0
        self._last = 0  # the seq of the newest entry appended, kept or not
        # Durable mode, while no app is connected: the entries up to this seq some app had, and their bytes.
        self._delivered = 0
        self._delivered_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, entry: Entry) -> None:
        entries = self._entries
        entries.append(entry)
        self.bytes += len(entry.part)
        self._last = entry.seq
        while entries and (len(entries) > self.max_events or self.bytes > self.max_bytes):
            gone = entries.popleft()
            self.bytes -= len(gone.part)
            if gone.seq <= self._delivered:
                self._delivered_bytes -= len(gone.part)

    @property
    def delivered(self) -> int:
        """The seq up to which some app has had every entry: see mark_delivered()."""
        return self._delivered

    def mark_delivered(self, seq: int) -> None:
        """The apps have had every entry up to `seq` (the last one has left): see room(). Never moves back."""
        seq = min(max(seq, self._delivered), self._last)
        entries = self._entries
        first = entries[0].seq if entries else self._last + 1
        had = sum(len(entry.part) for entry in islice(entries, max(seq - first + 1, 0)))
        self._delivered, self._delivered_bytes = seq, had

    @property
    def undelivered(self) -> int:
        """Entries kept that came after mark_delivered()."""
        return min(len(self._entries), self._last - self._delivered)

    def room(self, events: int, size: int) -> bool:
        """Whether `events` more entries of `size` bytes in all fit without pushing out one that came after
        mark_delivered(). Never for a message larger than the whole buffer (or any, with a limit of 0): kept, it
        would push out its own first events, so it waits for an app, which gets it live."""
        if events > self.max_events or size > self.max_bytes:
            return False
        undelivered = self.undelivered
        return not undelivered or (
            undelivered + events <= self.max_events and self.bytes - self._delivered_bytes + size <= self.max_bytes
        )

    def after(self, seq: int) -> Iterator[Entry] | None:
        """The entries newer than `seq`, oldest first, or None if some of them are gone already. Take them before the
        buffer changes: appending to it ends the iteration with a RuntimeError."""
        entries = self._entries
        # Empty, the buffer may still have dropped entries newer than `seq` (with a limit of 0, or an entry alone
        # over the byte limit).
        first = entries[0].seq if entries else self._last + 1
        if seq < first - 1:
            return None
        return islice(entries, seq - first + 1, None)
