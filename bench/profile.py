"""`python -m bench --profile`: where the daemons' CPU goes under a sustained load (default: syncar codec, Redis;
`--brokers amqp --contestants syncar-fs` profiles another pair).

It runs the 256 B throughput case (or, with `--rate`, a fixed rate) for a while with `py-spy record` (sampling,
non-blocking, so the daemons run at full speed) attached to both daemons, then prints each one's top functions by
own time and by total time. It samples a daemon only while it holds the GIL (`--gil`): running, not waiting in
epoll nor, on a loaded machine, for a CPU after a wake-up (which py-spy would otherwise count as busy in the loop).
The collapsed stacks are kept next to latest.json (profile-a.txt, profile-b.txt) for a flame graph tool.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.plan import Case, make_plan
from bench.processes import Daemon
from bench.report import derive
from bench.runner import Section

SAMPLE_RATE = 250
TOP = 25


def _function(frame: str) -> str:
    """`name (path/file.py:123)` -> `name (file.py)`: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    for anchor in ("site-packages", "sidecar", "backends", "lib"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor) + (anchor in ("site-packages", "lib")) :])
            break
    return f"{name} ({path})"


def summarise(collapsed: str) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for function in set(frames):
            total[function] += count
    if not samples:
        return "no samples (was the daemon busy?)\n"
    lines = [f"{samples} samples while on CPU", "", f"top {TOP} by own time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(TOP)]
    lines += ["", f"top {TOP} by total time (the function and what it calls):"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in total.most_common(TOP)]
    return "\n".join(lines) + "\n"


async def _record(
    spy: str, out: Path, case: Case, workdir: Path, *, root: Path, broker: str, contestant: str
) -> dict[str, Any]:
    seconds = case.seconds
    plan = make_plan(quick=True, brokers=(broker,), contestants=(contestant,), reps=1, seconds=seconds)
    section = Section(broker, plan, workdir, root)
    spies: dict[str, asyncio.subprocess.Process] = {}

    async def attach(daemon_a: Daemon, daemon_b: Daemon) -> None:
        for label, daemon in (("a", daemon_a), ("b", daemon_b)):
            spies[label] = await asyncio.create_subprocess_exec(
                spy,
                "record",
                "--pid",
                str(daemon.pid),
                "--duration",
                str(int(seconds) + 2),
                "--rate",
                str(SAMPLE_RATE),
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "--output",
                str(out / f"profile-{label}.txt"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )

    try:
        await section.start()
        run = await section.run(contestant, case, 0, on_daemons=attach)
        for label, process in spies.items():
            async with asyncio.timeout(seconds + 30):
                _, err = await process.communicate()
            if process.returncode:
                print(f"py-spy for daemon {label} failed: {err.decode(errors='replace')[-500:]}")
    finally:
        for process in spies.values():
            if process.returncode is None:
                process.kill()
        section.stop()
    return run


def profile(
    out: Path, seconds: float, root: Path, broker: str = "redis", contestant: str = "syncar", *, rate: int = 0
) -> int:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed (pip install py-spy)")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="syncar-profile-"))
    try:
        case = Case(f"rate-{rate}" if rate else "tp-256", 256, rate, seconds)
        run = asyncio.run(_record(spy, out, case, workdir, root=root, broker=broker, contestant=contestant))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures = derive(run) if not run.get("error") else {}
    achieved = figures.get("offered_rate_achieved") if rate else figures.get("throughput")
    print(
        f"load: {run.get('error') or format(achieved or 0, ',.0f') + ' events/s'}; "
        f"daemon CPU {figures.get('daemon_cpu_per_100k') or 0:.2f} s per 100k events"
    )
    offered = f"{rate:,} events/s" if rate else "as fast as it goes"
    report = [f"profile of {contestant} over {broker}, 256 B payloads, {offered}, {seconds:g} s\n"]
    for label, role in (("a", "publishing side (A: socket -> broker)"), ("b", "receiving side (B: broker -> socket)")):
        path = out / f"profile-{label}.txt"
        text = summarise(path.read_text()) if path.exists() else "no profile\n"
        report.append(f"== daemon {label.upper()}, {role}\n{text}")
    (out / "profile.txt").write_text("\n".join(report))
    print("\n".join(report))
    print(f"wrote {out / 'profile.txt'} and the collapsed stacks {out}/profile-[ab].txt")
    return 0
