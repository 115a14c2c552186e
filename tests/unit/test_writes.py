"""backends.base.writes: how a batch's pieces are cut into writes."""

from __future__ import annotations

from backends.base import OWN_IOVEC_BYTES, writes


def test_runs_of_short_pieces_are_joined_and_long_ones_go_as_they_are_in_order() -> None:
    long = [b"a" * OWN_IOVEC_BYTES, b"b" * (OWN_IOVEC_BYTES + 1)]
    out = writes([b"1", b"2", long[0], long[1], b"3", b"4" * (OWN_IOVEC_BYTES - 1)], OWN_IOVEC_BYTES)
    assert out == [b"12", long[0], long[1], b"3" + b"4" * (OWN_IOVEC_BYTES - 1)]
    assert out[1] is long[0] and out[2] is long[1]


def test_nothing_to_write_is_no_write() -> None:
    assert writes([], OWN_IOVEC_BYTES) == []
