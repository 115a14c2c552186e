"""The bounded memory of recently seen events, by `(origin, id)`, so that an event redelivered by the broker or resent
by its app is delivered once: in the relay, and in the Python client.

Standard library only, and apart from the bus ids' making (sidecar/dedup.py, HMAC and random scopes), so that
`import sidecar.client` imports neither `hmac` nor `secrets` (~2 ms of its CPU, docs/benchmarks.md).
"""

from __future__ import annotations


class SeenIds:
    """Keys added lately, in two generations of at most `size // 2` each; `add` says whether a key is new.

    It remembers at least the last `size // 2` keys and at most the last `size`. A generation is a set of hashes:
    a lookup is a set lookup, forgetting the oldest half is dropping a set, and a key costs an int, not the
    strings. (Two different keys with one 64-bit hash would make the second look like a duplicate: with the
    process's random hash seed, about one chance in 10^14 per event at the default size.)
    """

    __slots__ = ("_current", "_previous", "generation")

    def __init__(self, size: int) -> None:
        self.generation = max(size // 2, 1)
        self._current: set[int] = set()
        self._previous: set[int] = set()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def add(self, origin: str, event_id: str) -> bool:
        key = hash((origin, event_id))
        if key in self._current or key in self._previous:
            return False
        self._current.add(key)
        if len(self._current) >= self.generation:
            self._previous, self._current = self._current, set()
        return True
