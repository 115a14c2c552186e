from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from sidecar.framing import HEAD_BYTES, FrameDecoder, Oversized, split_lines


def test_many_frames_in_one_read_and_split_frames() -> None:
    decoder = FrameDecoder(100)
    assert decoder.feed(b'{"a":1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert decoder.partial
    assert decoder.feed(b":3}\n") == [b'{"c":3}']
    assert not decoder.partial


def test_blank_lines_are_skipped() -> None:
    assert FrameDecoder(100).feed(b"\n  \r\n{}\n\n") == [b"{}"]


def test_oversized_line_is_reported_once_and_the_next_one_survives() -> None:
    decoder = FrameDecoder(10)
    assert decoder.feed(b"x" * 25) == [b"x" * 25]
    assert decoder.feed(b"y" * 25) == []
    assert decoder.feed(b"zz\nok\n") == [b"ok"]
    frames = decoder.feed(b"a" * 11 + b"\nb\n")
    assert frames == [b"a" * 11, b"b"]
    assert [type(frame) for frame in frames] == [Oversized, bytes]


def test_an_oversized_line_keeps_only_its_head() -> None:
    decoder = FrameDecoder(HEAD_BYTES)
    assert decoder.feed(b"<" + b"x" * 3 * HEAD_BYTES) == [b"<" + b"x" * (HEAD_BYTES - 1)]
    assert decoder.feed(b"y" * HEAD_BYTES + b"\n") == []
    assert decoder.feed(b"<" + b"a" * 10) == []  # a line that grows over several reads
    assert decoder.feed(b"b" * 2 * HEAD_BYTES) == [(b"<" + b"a" * 10 + b"b" * HEAD_BYTES)[:HEAD_BYTES]]


@given(
    st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    st.integers(min_value=1, max_value=64),
)
def test_any_chunking_gives_the_same_frames(lines: list[bytes], chunk: int) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    decoder = FrameDecoder(60)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == [line for line in lines if line.strip()]


@given(st.binary(max_size=5000))
def test_memory_never_exceeds_the_limit(data: bytes) -> None:
    decoder = FrameDecoder(100)
    decoder.feed(data)
    assert decoder.buffered <= 100


@given(st.lists(st.binary(max_size=150), max_size=20), st.integers(min_value=1, max_value=64))
def test_any_chunking_of_any_stream_gives_what_one_read_gives(pieces: list[bytes], chunk: int) -> None:
    """Lines over the limit included: the decoder's answer does not depend on how the stream was cut."""
    stream = b"\n".join(pieces)
    whole = FrameDecoder(60)
    expected = whole.feed(stream)
    decoder = FrameDecoder(60)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == expected
    assert decoder.partial == whole.partial


def test_a_line_fed_a_byte_at_a_time_costs_what_any_byte_costs() -> None:
    """Framing is linear in the bytes received: a pending megabyte is not copied again at every read (it was:
    1 MB pending then a byte per read cost 100 times what the same reads cost with nothing pending)."""

    def cpu_seconds(pending: int) -> float:
        decoder = FrameDecoder(2 * 1024 * 1024)
        decoder.feed(b"x" * pending)
        started = time.process_time()
        for _ in range(20_000):
            decoder.feed(b"y")
        elapsed = time.process_time() - started
        assert decoder.feed(b"\n") == [b"x" * pending + b"y" * 20_000]
        return elapsed

    baseline = min(cpu_seconds(0) for _ in range(3))
    loaded = min(cpu_seconds(1_000_000) for _ in range(3))
    assert loaded < 10 * baseline + 0.05, f"{loaded:.3f}s of CPU with 1 MB pending, {baseline:.3f}s without"


@given(st.binary(max_size=300).map(lambda data: data.replace(b"a", b"\n")))
def test_split_lines_is_bytes_split(data: bytes) -> None:
    assert split_lines(data) == data.split(b"\n")
