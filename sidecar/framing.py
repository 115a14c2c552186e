"""Newline-delimited frames: split a byte stream into lines no longer than a limit. No I/O."""

from __future__ import annotations

#: How much of a line over the limit is kept to say which frame it was (its `id`, see protocol.readable_id).
HEAD_BYTES = 4096


class Oversized(bytes):
    """Stands in the output of `FrameDecoder.feed` for a line that was over the limit and was thrown away: its first
    `HEAD_BYTES` bytes."""

    __slots__ = ()


def split_lines(data: bytes) -> list[bytes]:
    """`data.split(b"\\n")`, the newlines found with `find` (memchr): `bytes.split` looks at one byte at a time, which
    for 16 KB frames (4 KiB payloads) cost 6.5 µs a line against 1.1 µs, and for 1.2 KB frames 0.9 against 0.7."""
    lines: list[bytes] = []
    append, find = lines.append, data.find
    start, end = 0, find(b"\n")
    while end >= 0:
        append(data[start:end])
        start = end + 1
        end = find(b"\n", start)
    append(data[start:] if start else data)
    return lines


class FrameDecoder:
    """Turns the bytes of one connection into complete lines.

    Many frames per read come out of one `feed`. A line longer than
    `max_bytes` is discarded up to its newline and reported once as
    `Oversized` (its head), so memory per connection never exceeds the limit and the
    frames after it still count. The cost is linear in the bytes fed, however
    they are cut: an unfinished line grows in place and is copied out once,
    when its newline comes.
    """

    __slots__ = ("_buffer", "_discarding", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()  # the unfinished line, never longer than max_bytes
        self._discarding = False

    @property
    def buffered(self) -> int:
        """How many bytes of an unfinished line are held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete lines (without the newline), blank lines skipped."""
        lines = split_lines(data)
        tail = lines.pop()
        limit = self.max_bytes
        buffer = self._buffer
        if self._discarding:
            if not lines:
                return []
            del lines[0]  # the end of the line that was too long
            self._discarding = False
        elif buffer:
            if not lines:  # still no newline: the line grows (amortised), it is not copied again
                if len(buffer) + len(tail) > limit:
                    head = Oversized((buffer[:HEAD_BYTES] + tail[:HEAD_BYTES])[:HEAD_BYTES])
                    buffer.clear()
                    self._discarding = True
                    return [head]
                buffer += tail
                return []
            buffer += lines[0]  # joined to the first line only, not to the whole read
            lines[0] = bytes(buffer)
            buffer.clear()
        if max(map(len, lines), default=0) <= limit:  # the usual case, in one pass
            frames = [line for line in lines if line and not line.isspace()]
        else:
            frames = [
                Oversized(line[:HEAD_BYTES]) if len(line) > limit else line
                for line in lines
                if len(line) > limit or (line and not line.isspace())
            ]
        if len(tail) > limit:
            frames.append(Oversized(tail[:HEAD_BYTES]))
            self._discarding = True
        else:
            buffer += tail
        return frames

    @property
    def partial(self) -> bool:
        """True while an unfinished line is pending (the stream ended mid-frame if this holds at EOF)."""
        return bool(self._buffer.strip()) or self._discarding

    @property
    def pending_head(self) -> bytes:
        """The first `HEAD_BYTES` of the unfinished line (to name the frame a stream ended in)."""
        return bytes(self._buffer[:HEAD_BYTES])
