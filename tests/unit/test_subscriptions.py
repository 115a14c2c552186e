from __future__ import annotations

from fnmatch import fnmatchcase

from hypothesis import given
from hypothesis import strategies as st

from sidecar.protocol import Pattern
from sidecar.subscriptions import CACHE_CHARS, CACHE_SIZE, EventFilter


def test_wildcards_on_path_and_event() -> None:
    wants = EventFilter([Pattern(path="api/*", event="created"), Pattern(path="users")])
    assert wants("api/messages", "created")
    assert not wants("api/messages", "removed")
    assert wants("users", "anything")
    assert not wants("user", "created")


def test_exact_names_and_whole_stars() -> None:
    wants = EventFilter([Pattern(path="messages", event="created"), Pattern(event="removed"), Pattern(path="users")])
    assert wants("messages", "created") and not wants("messages", "patched")
    assert wants("anything", "removed") and wants("users", "patched")
    assert EventFilter([Pattern()])("any", "thing")


def test_no_patterns_wants_nothing() -> None:
    assert not EventFilter([])("messages", "created")


names = st.text(alphabet="ab*?[]!", min_size=1, max_size=6)


@given(st.lists(st.tuples(names, names), max_size=6), st.text(alphabet="ab*?[]!", max_size=6),
       st.text(alphabet="ab*?[]!", max_size=6))
def test_answers_what_fnmatch_answers_for_any_pattern(patterns: list[tuple[str, str]], path: str, event: str) -> None:
    """Exact names, whole stars and wildcards take different ways through the filter: the answer is the same."""
    wants = EventFilter([Pattern(path=p, event=e) for p, e in patterns])
    assert wants(path, event) == any(fnmatchcase(path, p) and fnmatchcase(event, e) for p, e in patterns)


def test_cache_stays_bounded_in_entries() -> None:
    wants = EventFilter([Pattern(path="path*")])
    for i in range(CACHE_SIZE * 3):
        assert wants(f"path{i}", "e")
    assert len(wants._cache) <= CACHE_SIZE


def test_cache_stays_bounded_in_characters() -> None:
    """Whole paths were kept, whatever their size: 1,000 events with 1 MB paths took a daemon to 1 GB."""
    wants = EventFilter([Pattern(path="a*")])
    for size in (100, 1000, 3000, 100_000, 1_000_000):
        for i in range(50):
            assert wants("a" * size + str(i), "e")
            assert sum(len(path) + len(event) for path, event in wants._cache) <= CACHE_CHARS
