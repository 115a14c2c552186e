"""Per-client event filters built from the patterns in `hello`.

What a filter costs per event does not grow with the number of patterns nor
with the number of distinct paths that go by: exact names and a whole `*` are
set and dict lookups, and only patterns with a wildcard inside a name (at most
`hello.MAX_WILDCARD_PATTERNS`) are matched one by one, each in time linear
in the name (no regex, whose backtracking an app could choose), with their
answers cached within a bound in entries and in characters.
"""

from __future__ import annotations

import re

from sidecar.hello import Pattern

#: Distinct (path, event) pairs whose wildcard answer is remembered per filter; services and events are few.
CACHE_SIZE = 1024
#: Characters of paths and event names the cache may hold per filter; a longer pair is matched each time.
CACHE_CHARS = 64 * 1024


class _Events:
    """The event names wanted with some path: every one, or these."""

    __slots__ = ("every", "names")

    def __init__(self) -> None:
        self.every = False
        self.names: set[str] = set()

    def add(self, event: str) -> None:
        if event == "*":
            self.every = True
        else:
            self.names.add(event)


class Glob:
    """A shell-style pattern (`*`, `?`) that matches a name in time linear in the name.

    The part before the first `*` and the part after the last are checked where they must be, at the start and at
    the end of the name; each part between two `*` is found with `str.find` after the previous one, the leftmost
    occurrence being always the best. A `?` between two `*` would need a search that is not linear, so
    hello.Pattern refuses it.
    """

    __slots__ = ("_head", "_head_regex", "_middle", "_star", "_tail", "_tail_regex")

    def __init__(self, pattern: str) -> None:
        parts = pattern.split("*")
        self._star = len(parts) > 1
        self._head, self._head_regex = parts[0], _fixed(parts[0])
        self._tail = parts[-1] if self._star else ""
        self._tail_regex = _fixed(self._tail)
        self._middle = [part for part in parts[1:-1] if part]

    def __call__(self, name: str) -> bool:
        head, tail = self._head, self._tail
        end = len(name) - len(tail)
        if end < len(head) or (end > len(head) and not self._star):
            return False
        if not (name.startswith(head) if self._head_regex is None else self._head_regex.match(name)):
            return False
        if not (name.endswith(tail) if self._tail_regex is None else self._tail_regex.match(name, end)):
            return False
        start = len(head)
        for part in self._middle:
            start = name.find(part, start, end)
            if start < 0:
                return False
            start += len(part)
        return True


def _fixed(part: str) -> re.Pattern[str] | None:
    """A regex for a part of a pattern without `*` that has a `?` (any one character); None if it has none."""
    if "?" not in part:
        return None
    return re.compile("".join("." if c == "?" else re.escape(c) for c in part), re.DOTALL)


class EventFilter:
    """Decides whether a client wants an event."""

    __slots__ = ("_any_path", "_by_path", "_cache", "_cache_chars", "_wildcards")

    def __init__(self, patterns: list[Pattern]) -> None:
        self._any_path = _Events()  # the events wanted whatever the path
        self._by_path: dict[str, _Events] = {}
        self._wildcards: list[tuple[Glob, Glob]] = []
        for pattern in patterns:
            if pattern.wildcard:
                self._wildcards.append((Glob(pattern.path), Glob(pattern.event)))
            elif pattern.path == "*":
                self._any_path.add(pattern.event)
            else:
                self._by_path.setdefault(pattern.path, _Events()).add(pattern.event)
        self._cache: dict[tuple[str, str], bool] = {}
        self._cache_chars = 0

    @property
    def cached(self) -> tuple[int, int]:
        """How much the cache of wildcard answers holds: (path and event pairs, their characters)."""
        return len(self._cache), sum(len(path) + len(event) for path, event in self._cache)

    def __call__(self, path: str, event: str) -> bool:
        any_path = self._any_path
        if any_path.every or event in any_path.names:
            return True
        this_path = self._by_path.get(path)
        if this_path is not None and (this_path.every or event in this_path.names):
            return True
        return bool(self._wildcards) and self._wildcard(path, event)

    def _wildcard(self, path: str, event: str) -> bool:
        key = (path, event)
        wanted = self._cache.get(key)
        if wanted is None:
            wanted = False
            for path_matches, event_matches in self._wildcards:
                if path_matches(path) and event_matches(event):
                    wanted = True
                    break
            chars = len(path) + len(event)
            if chars <= CACHE_CHARS // 16:  # a pair this long is rare: matched again rather than kept
                if len(self._cache) >= CACHE_SIZE or self._cache_chars + chars > CACHE_CHARS:
                    self._cache.clear()
                    self._cache_chars = 0
                self._cache[key] = wanted
                self._cache_chars += chars
        return wanted
