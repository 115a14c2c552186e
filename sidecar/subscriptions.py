"""Per-client event filters built from the patterns in `hello`.

What a filter costs per event does not grow with the number of patterns nor
with the number of distinct paths that go by: exact names and a whole `*` are
set and dict lookups, and only patterns with a wildcard inside a name (at most
`protocol.MAX_WILDCARD_PATTERNS`) are regexes, whose answers are cached within
a bound in entries and in characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fnmatch import translate

from sidecar.protocol import Pattern

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


def _matcher(name: str) -> Callable[[str], object]:
    return re.compile(translate(name)).match


class EventFilter:
    """Decides whether a client wants an event."""

    __slots__ = ("_any_path", "_by_path", "_cache", "_cache_chars", "_wildcards")

    def __init__(self, patterns: list[Pattern]) -> None:
        self._any_path = _Events()  # the events wanted whatever the path
        self._by_path: dict[str, _Events] = {}
        self._wildcards: list[tuple[Callable[[str], object], Callable[[str], object]]] = []
        for pattern in patterns:
            if pattern.wildcard:
                self._wildcards.append((_matcher(pattern.path), _matcher(pattern.event)))
            elif pattern.path == "*":
                self._any_path.add(pattern.event)
            else:
                self._by_path.setdefault(pattern.path, _Events()).add(pattern.event)
        self._cache: dict[tuple[str, str], bool] = {}
        self._cache_chars = 0

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
            for path_match, event_match in self._wildcards:
                if path_match(path) is not None and event_match(event) is not None:
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
