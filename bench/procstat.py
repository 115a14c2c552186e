"""CPU time and memory of processes we started, from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` so far, in seconds; 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid` in KiB; empty if it is gone."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line[2:5].lower()] = int(line.split()[1])
    return found


def reset_peak(pid: int) -> None:
    """Set `pid`'s VmHWM back to its current RSS (Linux >= 4.0), so the next reading is the peak of one run."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def task_stats(pid: int) -> tuple[int, int]:
    """CPU nanoseconds and voluntary context switches (wake-ups after blocking) of `pid`'s threads together.

    Exact to the nanosecond, where /proc/<pid>/stat counts in 10 ms ticks: what a run of a few hundred events at a
    low rate needs. Only threads alive now count; a daemon's are long-lived. (0, 0) if it is gone.
    """
    cpu_ns = switches = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                cpu_ns += int((task / "schedstat").read_text().split()[0])
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        switches += int(line.split()[1])
    return cpu_ns, switches


def own_usage() -> dict[str, float]:
    """This process's CPU seconds, peak RSS and voluntary context switches (wake-ups), for a worker's report."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_kib": float(usage.ru_maxrss),
        "wakeups": float(usage.ru_nvcsw),
    }
