from __future__ import annotations

from sidecar.replay import Entry, ReplayBuffer, SharedStrings


def entry(seq: int, size: int = 10) -> Entry:
    return Entry(seq, "p", "e", None, b'"o"', b"x" * size)


def test_after_returns_newer_entries_or_none_when_gone() -> None:
    buffer = ReplayBuffer(max_events=3, max_bytes=1000)
    for seq in range(1, 6):
        buffer.append(entry(seq))
    assert len(buffer) == 3
    assert [e.seq for e in buffer.after(2) or []] == [3, 4, 5]
    assert [e.seq for e in buffer.after(4) or []] == [5]
    assert list(buffer.after(5) or [None]) == []
    assert buffer.after(1) is None


def test_byte_bound() -> None:
    buffer = ReplayBuffer(max_events=100, max_bytes=25)
    for seq in range(1, 4):
        buffer.append(entry(seq))
    assert buffer.bytes <= 25
    assert [e.seq for e in buffer.after(1) or []] == [2, 3]


def test_empty_buffer_resumes_nothing() -> None:
    assert list(ReplayBuffer(10, 100).after(7) or [None]) == []


def test_frame_is_the_event_with_its_seq_and_origin() -> None:
    frame = Entry(7, "p", "e", None, b'"o"', b'{"id":"1"}').frame()
    assert frame == b'{"type":"event","seq":7,"origin":"o","id":"1"}\n'


def test_shared_strings_stay_bounded_in_count_and_length() -> None:
    shared = SharedStrings(max_strings=100, max_length=50)
    first = shared["".join(["mess", "ages"])]
    assert shared["".join(["messa", "ges"])] is first  # one copy of a repeated string
    for i in range(1000):
        assert shared[f"unique-{i}"] == f"unique-{i}"
        assert len(shared) <= 100
    long = "x" * 51
    assert shared[long] is long and long not in shared


def test_an_empty_buffer_still_says_what_it_has_dropped() -> None:
    """With nothing kept (a limit of 0, or an event alone over the byte limit), a resume from before the events it
    dropped is a gap, not an empty replay (which left a resuming client waiting for events that would not come)."""
    buffer = ReplayBuffer(max_events=10, max_bytes=5)
    buffer.append(entry(1))
    buffer.append(entry(2))
    assert len(buffer) == 0
    assert buffer.after(0) is None and buffer.after(1) is None
    assert list(buffer.after(2) or [None]) == []
