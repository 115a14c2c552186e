"""Per-client event filters built from the patterns in `hello`."""

from __future__ import annotations

import re
from fnmatch import translate

from sidecar.protocol import Pattern

#: Distinct (path, event) pairs remembered per filter; services and events are few, so this rarely fills.
CACHE_SIZE = 1024


class EventFilter:
    """Decides whether a client wants an event; answers are cached since paths and event names repeat."""

    __slots__ = ("_cache", "_rules")

    def __init__(self, patterns: list[Pattern]) -> None:
        self._rules = [(re.compile(translate(p.path)), re.compile(translate(p.event))) for p in patterns]
        self._cache: dict[tuple[str, str], bool] = {}

    def __call__(self, path: str, event: str) -> bool:
        key = (path, event)
        wanted = self._cache.get(key)
        if wanted is None:
            wanted = any(p.match(path) and e.match(event) for p, e in self._rules)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = wanted
        return wanted
