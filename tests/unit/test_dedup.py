from __future__ import annotations

from sidecar.dedup import SeenIds


def test_new_then_seen_and_bounded() -> None:
    seen = SeenIds(3)
    assert seen.add("a", "1")
    assert not seen.add("a", "1")
    assert seen.add("b", "1")  # the same id from another origin is another event
    for i in range(2, 6):
        assert seen.add("a", str(i))
    assert len(seen) == 3
    assert seen.add("a", "1")  # forgotten: the window is bounded
