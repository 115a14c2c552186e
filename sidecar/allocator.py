"""glibc's allocator, told to keep the daemon's megabyte-sized buffers on its heap.

At full speed a broker message carries up to a megabyte of events (`outbox.MAX_BATCH_BYTES`), and each passes
through several buffers of that size: the batch the codec joins, the broker library's read buffer and the copy it
hands over, the frames joined for an app. glibc serves anything over 128 KiB with a fresh mmap() and returns it
with munmap() when freed (its threshold grows only to the largest block freed, and the heap's top is trimmed at
twice that), so every such buffer came as new pages, each faulted in and zeroed by the kernel: with 4 KiB payloads
the receiving daemon took 40,000 to 45,000 page faults in a 3 s run instead of 12,000, and both daemons spent 17%
more CPU per event (docs/benchmarks/history.md, "Closing the full-speed gaps"). A fixed threshold above the batch size,
and a trim threshold above what a
few of them take, keep those pages in use. The cost: up to `TRIM_THRESHOLD` of freed memory stays with the process.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: Blocks up to this size come from the heap: above a batch (1 MiB) and the frames made of one.
MMAP_THRESHOLD = 2 << 20
#: Free memory at the heap's top kept, not given back: room for the few batch-sized buffers alive at once.
TRIM_THRESHOLD = 4 << 20
# mallopt()'s parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_large_buffers() -> bool:
    """Set the thresholds, unless glibc is not the allocator or the environment sets them already
    (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, read by glibc itself). Whether they were set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        import ctypes  # noqa: PLC0415  # here, after the daemon is listening: ~5 ms of import, not on the start's path

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, AttributeError, OSError):  # no ctypes in this Python, no mallopt (not glibc), no symbols
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("allocator thresholds %s", "set" if done else "refused")
    return done
