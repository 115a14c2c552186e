"""sidecar.allocator: glibc told to keep batch-sized buffers on its heap, unless the environment says otherwise."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from sidecar.allocator import keep_large_buffers

GLIBC = platform.libc_ver()[0] == "glibc"

#: What a broker batch of a megabyte goes through, 50 times: read into a growing buffer 32 KiB at a time, copied out,
#: and joined again from parts (the nats-py parser, the codec). Prints whether the thresholds were set, and the
#: minor page faults it cost the process.
FAULTS = """
import resource
from sidecar.allocator import keep_large_buffers
print(keep_large_buffers())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
chunk = bytes(32768)
for n in range(50):
    buffer = bytearray()
    for _ in range(32):
        buffer.extend(chunk)
    body = bytes(buffer[:-100])
    del buffer[:-100]
    joined = b"".join([body[:500000], body[500000:]])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(env: dict[str, str] | None = None) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    said, count = done.stdout.split()
    return said, int(count)


@pytest.mark.skipif(not GLIBC, reason="mallopt() thresholds are glibc's")
def test_a_batch_sized_buffer_is_not_new_pages_each_time() -> None:
    # glibc's own thresholds: ~13,000 faults (each megabyte new pages from mmap(), or the heap's top trimmed and
    # grown again); kept on the heap: ~1,500.
    said, count = faults()
    assert said == "True"
    assert count < 5000, count


@pytest.mark.skipif(not GLIBC, reason="mallopt() thresholds are glibc's")
def test_thresholds_set_in_the_environment_are_left_alone() -> None:
    said, _ = faults({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert said == "False"


def test_a_python_without_ctypes_runs_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # A daemon run as another user could not import it from a Python installed under /root: it must not stop.
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setitem(sys.modules, "ctypes", None)  # `import ctypes` raises ImportError
    assert keep_large_buffers() is False
