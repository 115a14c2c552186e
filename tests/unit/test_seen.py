from __future__ import annotations

import tracemalloc

from sidecar.seen import SeenIds


def test_new_then_seen() -> None:
    seen = SeenIds(100)
    assert seen.add("a", "1")
    assert not seen.add("a", "1")
    assert seen.add("b", "1")  # the same id from another origin is another event
    assert not seen.add("b", "1")


def test_remembers_at_least_half_the_size_and_at_most_the_size() -> None:
    seen = SeenIds(10)
    for i in range(1000):
        assert seen.add("a", str(i))
        assert len(seen) <= 10
    assert all(not seen.add("a", str(i)) for i in range(995, 1000))  # the newest half is always there
    assert seen.add("a", "0")  # long forgotten: the window is bounded


def test_keys_are_not_python_objects() -> None:
    # The relay's 100,000 keys took ~9 MiB as ints in sets; in the tables they take no heap (16 bytes a key mapped).
    seen = SeenIds(100_000)
    ids = [str(i) for i in range(99_999)]  # both generations full but for one key
    tracemalloc.start()
    try:
        for event_id in ids:
            seen.add("origin", event_id)
        heap, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert heap < 64 * 1024
    assert len(seen) == 99_999
    assert not any(seen.add("origin", event_id) for event_id in ids)


def _shared_kib() -> int:
    with open("/proc/self/status") as status:  # the tables are shared anonymous mappings: RssShmem
        return next(int(line.split()[1]) for line in status if line.startswith("RssShmem:"))


def test_the_relays_window_takes_a_megabyte_and_a_half() -> None:
    # Two generations of twice as many slots as keys: 1.5 MiB for the relay's 100,000 keys (2 MiB when each table
    # had a power of two slots).
    before = _shared_kib()
    seen = SeenIds(100_000)
    for i in range(99_999):
        seen.add("origin", str(i))
    assert _shared_kib() - before <= 1600
