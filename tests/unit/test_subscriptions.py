from __future__ import annotations

import time
from fnmatch import fnmatchcase

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sidecar.hello import Pattern
from sidecar.subscriptions import CACHE_CHARS, CACHE_SIZE, EventFilter, Glob


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


def floating(name: str) -> bool:
    """A `?` between two `*`, which hello.Pattern refuses."""
    return any("?" in middle for middle in name.split("*")[1:-1])


names = st.text(alphabet="ab*?", min_size=1, max_size=8).filter(lambda name: not floating(name))
subjects = st.text(alphabet="ab*?[\n", max_size=10)


@given(st.lists(st.tuples(names, names), max_size=6), subjects, subjects)
def test_answers_what_fnmatch_answers_for_any_pattern(patterns: list[tuple[str, str]], path: str, event: str) -> None:
    """Exact names, whole stars and wildcards take different ways through the filter: the answer is the same."""
    wants = EventFilter([Pattern(path=p, event=e) for p, e in patterns])
    assert wants(path, event) == any(fnmatchcase(path, p) and fnmatchcase(event, e) for p, e in patterns)


def test_a_bracket_is_an_ordinary_character() -> None:
    assert Glob("item[12]*")("item[12]-a") and not Glob("item[12]*")("item1-a")


def test_a_question_mark_between_two_stars_is_refused() -> None:
    with pytest.raises(ValidationError, match="between two"):
        Pattern(path="api/*/v?/*")
    assert Pattern(path="api/v?/*/x?").wildcard


def test_what_a_match_costs_does_not_grow_with_the_pattern() -> None:
    """A regex costs up to the name's length times the pattern's (0.7 ms for one pattern of 256 characters on a 1 KB
    name, 8 ms on 16 KB): an app chose both. A Glob costs about the name's length, however long the pattern."""

    def shapes(length: int) -> list[str]:  # each slow for a regex in its own way
        return ["00*a" + "?" * length + "b", "00*" + "a" * length + "b*x", "00*" + "a*" * (length // 2) + "b"]

    names = [f"00{'a' * 16_000}{end}" for end in ("a", "x", "ab")]

    def cpu_seconds(length: int) -> float:
        globs = [Glob(pattern) for pattern in shapes(length)]
        started = time.process_time()
        for _ in range(20):
            for name in names:
                for glob in globs:
                    glob(name)
        return time.process_time() - started

    short = min(cpu_seconds(8) for _ in range(3))
    long = min(cpu_seconds(250) for _ in range(3))
    assert long < 4 * short + 0.005, f"{long:.4f}s with patterns of 250 characters, {short:.4f}s with 8"


def test_cache_stays_bounded_in_entries() -> None:
    wants = EventFilter([Pattern(path="path*")])
    for i in range(CACHE_SIZE * 3):
        assert wants(f"path{i}", "e")
    assert wants.cached[0] <= CACHE_SIZE


def test_cache_stays_bounded_in_characters() -> None:
    """Whole paths were kept, whatever their size: 1,000 events with 1 MB paths took a daemon to 1 GB."""
    wants = EventFilter([Pattern(path="a*")])
    for size in (100, 1000, 3000, 100_000, 1_000_000):
        for i in range(50):
            assert wants("a" * size + str(i), "e")
            assert wants.cached[1] <= CACHE_CHARS
