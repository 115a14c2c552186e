"""A few counters in a shared file: the subscriber says how many events it has, the publisher how many it sent.

The publisher keeps at most a window of events in flight (sent, not yet received), so every contestant runs at
what its slowest stage sustains, and no broker or daemon buffer overflows. Python maps the file; the Node
workers read and write the same bytes with pread/pwrite, which the page cache keeps coherent with the map.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

SIZE = 64
_RECEIVED, _SENT, _DONE = 0, 8, 16
_U64 = struct.Struct("<Q")


class Flow:
    def __init__(self, path: Path, *, create: bool = False) -> None:
        if create:
            path.write_bytes(bytes(SIZE))
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)

    def _get(self, offset: int) -> int:
        value: int = _U64.unpack_from(self._map, offset)[0]
        return value

    @property
    def received(self) -> int:
        return self._get(_RECEIVED)

    @received.setter
    def received(self, value: int) -> None:
        _U64.pack_into(self._map, _RECEIVED, value)

    @property
    def sent(self) -> int:
        return self._get(_SENT)

    @property
    def done(self) -> bool:
        return self._get(_DONE) != 0

    def finish(self, sent: int) -> None:
        """The publisher is done; `sent` events went out."""
        _U64.pack_into(self._map, _SENT, sent)
        _U64.pack_into(self._map, _DONE, 1)

    def close(self) -> None:
        self._map.close()
