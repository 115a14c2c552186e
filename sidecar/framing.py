"""Newline-delimited frames: split a byte stream into lines no longer than a limit. No I/O."""

from __future__ import annotations

from typing import Final

#: Stands in the output of `FrameDecoder.feed` for a line that was over the limit and was thrown away.
OVERSIZED: Final = b""


class FrameDecoder:
    """Turns the bytes of one connection into complete lines.

    Many frames per read come out of one `feed`. A line longer than
    `max_bytes` is discarded up to its newline and reported once as
    `OVERSIZED`, so memory per connection never exceeds the limit and the
    frames after it still count.
    """

    __slots__ = ("_buffer", "_discarding", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete lines (without the newline), blank lines skipped."""
        buffer = self._buffer
        buffer += data
        lines: list[bytes] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            if self._discarding:
                self._discarding = False
            elif end - start > self.max_bytes:
                lines.append(OVERSIZED)
            elif not buffer[start:end].isspace() and end > start:
                lines.append(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        if len(buffer) > self.max_bytes:
            if not self._discarding:
                lines.append(OVERSIZED)
                self._discarding = True
            buffer.clear()
        return lines

    @property
    def partial(self) -> bool:
        """True while an unfinished line is pending (the stream ended mid-frame if this holds at EOF)."""
        return bool(self._buffer.strip()) or self._discarding
