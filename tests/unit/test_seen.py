from __future__ import annotations

import gc
import sys

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


def test_a_remembered_key_takes_an_int_of_two_digits() -> None:
    """A 64-bit hash is an int of three 30-bit digits, 48 bytes in pymalloc; cut to 60 bits, two digits and 32 bytes:
    the relay's 100,000 keys took 9.0 MiB of resident memory, now 8.0 (docs/benchmarks.md)."""
    seen = SeenIds(2000)
    for i in range(1500):
        seen.add("host-1a2b3c", f"run:{i}")
    # The generations, reached as the collector sees them rather than by their private names.
    keys = [key for generation in gc.get_referents(seen) if isinstance(generation, set) for key in generation]
    assert len(keys) == len(seen) == 1500  # both generations
    assert all(0 <= key < 2**60 and sys.getsizeof(key) <= 32 for key in keys)
