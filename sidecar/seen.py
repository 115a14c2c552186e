"""The bounded memory of recently seen events, by `(origin, id)`, so that an event redelivered by the broker or resent
by its app is delivered once: in the relay, and in the Python client.

Standard library only, and apart from the bus ids' making (sidecar/dedup.py, HMAC and random scopes), so that
`import sidecar.client` imports neither `hmac` nor `secrets` (~2 ms of its CPU, docs/benchmarks/history.md, "What was
still imported").
"""

from __future__ import annotations

import mmap

_KEY_BYTES = 8  # a 64-bit hash


def _table(slots: int) -> memoryview:
    """`slots` zeroed 64-bit slots in pages of their own: the kernel gives them as they are first written, and takes
    them back when the table is dropped (a Python list or set of ints would keep ~50 bytes a key on the heap)."""
    return memoryview(mmap.mmap(-1, slots * _KEY_BYTES)).cast("q")


class SeenIds:
    """Keys added lately, in two generations of at most `size // 2` each; `add` says whether a key is new.

    It remembers at least the last `size // 2` keys and at most the last `size`. A generation is an open-addressed
    table of the keys' 64-bit hashes with twice as many slots as it takes keys, so at most half full, 0 marking a
    free slot: a key costs 16 bytes, not the ~100 of an int in a set (the relay's 100,000 keys: 1.5 MiB, where two
    sets took 9, and tables of a power of two slots 2), and forgetting the oldest half is dropping a table. (Two
    different keys with one 64-bit hash would make the second look like a duplicate: with the process's random hash
    seed, about one chance in 10^14 per event at the default size.)
    """

    __slots__ = ("_added", "_current", "_previous", "_previous_added", "_slots", "generation")

    def __init__(self, size: int) -> None:
        self.generation = max(size // 2, 1)
        self._slots = slots = 2 * self.generation
        self._current = _table(slots)
        self._previous = _table(slots)
        self._added = self._previous_added = 0

    def __len__(self) -> int:
        return self._added + self._previous_added

    def add(self, origin: str, event_id: str) -> bool:
        key = hash((origin, event_id)) or 1  # 0 is a free slot
        slots = self._slots
        start = key % slots
        table = self._previous  # each table searched in a loop of its own: a loop over both costs ~0.15 us a key
        slot = start
        while held := table[slot]:
            if held == key:
                return False
            slot += 1
            if slot == slots:
                slot = 0
        table = self._current
        slot = start
        while held := table[slot]:
            if held == key:
                return False
            slot += 1
            if slot == slots:
                slot = 0
        table[slot] = key
        self._added += 1
        if self._added >= self.generation:
            self._previous, self._current = self._current, _table(slots)
            self._previous_added, self._added = self._added, 0
        return True
