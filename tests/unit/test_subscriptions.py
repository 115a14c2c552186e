from __future__ import annotations

from sidecar.protocol import Pattern
from sidecar.subscriptions import CACHE_SIZE, EventFilter


def test_wildcards_on_path_and_event() -> None:
    wants = EventFilter([Pattern(path="api/*", event="created"), Pattern(path="users")])
    assert wants("api/messages", "created")
    assert not wants("api/messages", "removed")
    assert wants("users", "anything")
    assert not wants("user", "created")


def test_no_patterns_wants_nothing() -> None:
    assert not EventFilter([])("messages", "created")


def test_cache_stays_bounded() -> None:
    wants = EventFilter([Pattern()])
    for i in range(CACHE_SIZE * 3):
        assert wants(f"path{i}", "e")
    assert len(wants._cache) <= CACHE_SIZE
