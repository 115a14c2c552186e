"""`python -m bench --low-rate`: what a daemon costs at the rates fleets run, with no traffic, and to start.

Three parts, each case a few seconds, every case repeated and the repetitions alternated:

- **Low rates**: 100 and 1,000 events/s of 256 B between two daemons on each broker, and the raw Python ceiling
  (bench.raw_*: publisher and subscriber in their own processes) paced the same way in the same run. The figure is
  CPU per event of the publishing and of the receiving daemon against that of the raw publisher and subscriber,
  read exactly (bench.procstat.task_stats for the daemons, getrusage in the workers, both without what starting
  and connecting cost), and the wake-ups (voluntary context switches) per event.
- **Idle**: one daemon on each broker with no app and no traffic: CPU, wake-ups and resident memory over a while;
  then its resident memory once `/metrics` has been read, as Prometheus reads it from every deployed daemon.
- **Start**: from starting `python -m sidecar run` to its socket answering a hello with a welcome; and the time
  `python -X importtime` gives `import sidecar.client`, the Python client. Both in wall time, which a loaded
  machine stretches, and in CPU time, which it does not. syncar's modules are byte-compiled first, as `pip install`
  leaves them: with PYTHONDONTWRITEBYTECODE set (CI, containers), every start would compile them from source again.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.lowrate_report import markdown, summarise, table
from bench.parts import Part, Progress, alternated, exit_status, on_each_broker, run_part, said
from bench.parts_plot import plot_low_rate
from bench.plan import Case, in_turn
from bench.processes import Daemon, Meter
from bench.procstat import memory_kib, task_stats
from bench.report import derive
from bench.runner import Section, root_of, stop_daemons

RATES = (100, 1_000)
SIZE = 256
#: The contestants this part knows: syncar's two codecs against the raw ceiling; `syncar-base` is the syncar codec
#: from the checkout given by --base-root.
CONTESTANTS = ("syncar", "syncar-fs", "ceiling", "syncar-base")
DEFAULT_CONTESTANTS = ("syncar", "ceiling")
#: Publishing time of a low-rate run and length of an idle one, by default; repetitions of each case.
SECONDS = 5.0
REPS = 3
#: How often the start measurement knocks on the socket, and how long it waits in all.
KNOCK_EVERY = 0.002
START_TIMEOUT = 30.0
_HTTP_LINE = re.compile(rb"http on ([\d.]+):(\d+) ")
_IMPORT_LINE = re.compile(rb"^import time:\s+(\d+) \|\s+(\d+) \|\s+sidecar\.client$", re.MULTILINE)


def _worker_cost(line_usage: dict[str, float], at_ready: dict[str, float]) -> tuple[float, float]:
    """A worker's CPU seconds and wake-ups from ready to its end."""
    return (line_usage["cpu_s"] - at_ready["cpu_s"], line_usage.get("wakeups", 0.0) - at_ready.get("wakeups", 0.0))


def rate_figures(run: dict[str, Any]) -> dict[str, Any]:
    """CPU µs and wake-ups per event of each side of one low-rate run, with its latency and whether it kept up."""
    if run.get("error"):
        return {}
    base = derive(run)
    sent, received = base["sent"], base["received"]
    figures = {
        name: base[name]
        for name in ("sent", "received", "lost", "p50_ms", "p99_ms", "saturated", "offered_rate_achieved")
    }
    sides: dict[str, tuple[float, float, int]] = {}  # side -> (cpu s, wake-ups, events it handled)
    if run["contestant"] == "ceiling":
        sides["pub"] = (*_worker_cost(run["pub_usage"], run["ready_usage"]["pub"]), sent)
        sides["sub"] = (*_worker_cost(run["sub_usage"], run["ready_usage"]["sub"]), received)
    else:
        processes = run["processes"]
        for side, name in (("pub", "daemon_a"), ("sub", "daemon_b"), ("both", "daemon")):
            if name in processes:  # local:// has one daemon, publisher and receiver at once
                p = processes[name]
                sides[side] = (p["cpu_ns"] / 1e9, p["wakeups"], sent if side == "pub" else received)
    for side, (cpu_s, wakeups, events) in sides.items():
        figures[f"{side}_us"] = cpu_s * 1e6 / events if events else None
        figures[f"{side}_wakeups"] = wakeups / events if events else None
    for figure in ("us", "wakeups"):
        if f"both_{figure}" not in figures and None not in (
            mine := (figures.get(f"pub_{figure}"), figures.get(f"sub_{figure}"))
        ):
            figures[f"both_{figure}"] = sum(mine)
    return figures


async def _rate_runs(section: Section, *, seconds: float, reps: int, progress: Progress) -> list[dict[str, Any]]:
    runs = []
    for rep, rate, contestant in alternated(reps, RATES, section.plan.contestants_for(section.broker)):
        run = await section.run(contestant, Case(f"rate-{rate}", SIZE, rate, seconds), rep)
        run["figures"] = rate_figures(run)
        runs.append(run)
        progress(_said(run))
    return runs


def _said(run: dict[str, Any]) -> str:
    def figures(f: dict[str, Any]) -> str:
        us = "  ".join(
            f"{side} {f[f'{side}_us']:.0f} µs, {f[f'{side}_wakeups']:.2f} wake-ups"
            for side in ("pub", "sub", "both")
            if f.get(f"{side}_us") is not None
        )
        return us + (f"  lost {f['lost']}" if f["lost"] else "") + ("  SATURATED" if f["saturated"] else "")

    return said(f"  {run['broker']:6} {run['contestant']:9} {run['rate']:5}/s rep {run['rep'] + 1}: ", run, figures)


async def _idle_run(section: Section, seconds: float, rep: int, contestant: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "broker": section.broker,
        "contestant": contestant,
        "rep": rep,
        "seconds": seconds,
        "loadavg": os.getloadavg()[0],
    }
    daemons: list[Daemon] = []
    try:
        daemons = await section.start_daemons(
            f"idle-{rep + 1}", 1, root=root_of(contestant, section.syncar_root, section.base_root)
        )
        meter = Meter({"daemon": daemons[0].pid})
        meter.begin()
        await asyncio.sleep(seconds)  # the measurement itself: nothing happens, for this long
        p = meter.end()["daemon"]
        memory = memory_kib(daemons[0].pid)
        record.update(
            cpu_ms_per_s=p["cpu_ns"] / 1e6 / seconds,
            wakeups_per_s=p["wakeups"] / seconds,
            rss_mib=memory.get("rss", 0) / 1024,
            hwm_mib=memory.get("hwm", 0) / 1024,
        )
        await _scrape(daemons[0])
        record["scraped_rss_mib"] = memory_kib(daemons[0].pid).get("rss", 0) / 1024
    except (RuntimeError, OSError) as exc:
        record["error"] = str(exc)[:2000]
    finally:
        record["daemon_exits"] = stop_daemons(daemons, f"idle-{rep + 1}")
    return record


async def _scrape(daemon: Daemon) -> None:
    """Read the daemon's `/metrics` once, whole."""
    found = _HTTP_LINE.search(daemon.log_path.read_bytes())
    if found is None:
        raise RuntimeError(f"syncar {daemon.name} logged no http address; see {daemon.log_path}")
    async with asyncio.timeout(START_TIMEOUT):
        reader, writer = await asyncio.open_connection(found[1].decode(), int(found[2]))
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"syncar {daemon.name}: /metrics answered {answer[:100]!r}")


def _knock(path: Path) -> dict[str, Any] | None:
    """The welcome the daemon at `path` answers a hello with, or None if nothing listens there yet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(START_TIMEOUT)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        sock.sendall(b'{"type":"hello","client":"bench-start","subscribe":[]}\n')
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    welcome: dict[str, Any] = orjson.loads(data.partition(b"\n")[0])
    return welcome


async def _start_run(section: Section, rep: int, contestant: str) -> dict[str, Any]:
    """From spawning a daemon to its welcome, polled every KNOCK_EVERY."""
    record: dict[str, Any] = {
        "broker": section.broker,
        "contestant": contestant,
        "rep": rep,
        "loadavg": os.getloadavg()[0],
    }
    began = time.monotonic()
    daemon = Daemon(
        section.dir,
        f"start-{rep + 1}",
        section.uri,
        f"bench-{uuid.uuid4().hex[:12]}",
        "syncar",
        root=root_of(contestant, section.syncar_root, section.base_root),
    )
    try:
        while (welcome := _knock(daemon.socket)) is None:
            if not daemon.alive():
                raise RuntimeError(f"syncar exited with {daemon.process.returncode}; see {daemon.log_path}")
            if time.monotonic() - began > START_TIMEOUT:
                raise RuntimeError(f"syncar did not answer within {START_TIMEOUT}s; see {daemon.log_path}")
            await asyncio.sleep(KNOCK_EVERY)
        record.update(
            start_ms=(time.monotonic() - began) * 1000,
            start_cpu_ms=task_stats(daemon.pid)[0] / 1e6,
            broker_at_welcome=welcome.get("broker"),
        )
        # It may answer before it handles SIGTERM: stopped only once it says it is ready, it exits cleanly.
        await daemon.ready()
    except (RuntimeError, OSError) as exc:
        record["error"] = str(exc)[:2000]
    finally:
        record["daemon_exits"] = stop_daemons([daemon], f"start-{rep + 1}")
    return record


def byte_compile(root: Path) -> None:
    """Write the .pyc files of the checkout's packages, as an install does; the daemons then only read them."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "sidecar", "backends"],
        cwd=root,
        capture_output=True,
        timeout=120,
        check=True,
    )


def import_run(root: Path, rep: int, contestant: str = "syncar") -> dict[str, Any]:
    """`import sidecar.client` in a fresh interpreter: what -X importtime says of it (wall time), and the CPU time
    it took, the steadier figure on a loaded machine."""

    def python(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, *argv],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            timeout=60,
            check=True,
        )

    record: dict[str, Any] = {"contestant": contestant, "rep": rep, "loadavg": os.getloadavg()[0]}
    found = _IMPORT_LINE.search(python("-X", "importtime", "-c", "import sidecar.client").stderr)
    if found is None:
        return {**record, "error": "python -X importtime said nothing of sidecar.client"}
    cpu = python("-c", "import time; t = time.process_time(); import sidecar.client; print(time.process_time() - t)")
    return {**record, "importtime_ms": int(found.group(2)) / 1000, "import_cpu_ms": float(cpu.stdout) * 1000}


async def _other_runs(
    section: Section, *, seconds: float, reps: int, progress: Progress
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Idle and start runs on one broker, alternated, and between the checkouts (`_checkouts`)."""
    idle, start = [], []
    for rep in range(reps):
        for contestant in _checkouts(section.base_root, rep):
            idle.append(await _idle_run(section, seconds, rep, contestant))
            start.append(await _start_run(section, rep, contestant))
            progress(f"  {section.broker:6} {contestant:11} rep {rep + 1}: " + _said_other(idle[-1], start[-1]))
    return idle, start


def _checkouts(base_root: Path | None, rep: int) -> tuple[str, ...]:
    """The contestants whose idle, start and import are measured in repetition `rep`, in turn: with --base-root, its
    checkout's and this one's."""
    return in_turn(("syncar",) if base_root is None else ("syncar-base", "syncar"), rep)


def _said_other(i: dict[str, Any], s: dict[str, Any]) -> str:
    return (
        "idle "
        + (
            f"error: {i['error'].splitlines()[0][:120]}"
            if i.get("error")
            else f"{i['cpu_ms_per_s']:.2f} ms CPU/s, {i['wakeups_per_s']:.1f} wake-ups/s, {i['rss_mib']:.1f} MiB "
            f"({i['scraped_rss_mib']:.1f} once /metrics was read)"
        )
        + "; start "
        + (
            f"error: {s['error'].splitlines()[0][:120]}"
            if s.get("error")
            else f"{s['start_ms']:.0f} ms to a welcome, {s['start_cpu_ms']:.0f} ms of CPU"
        )
    )


async def measure(part: Part, workdir: Path, progress: Progress) -> dict[str, Any]:
    """Low rates, idle and start on every broker; a broker that cannot start is reported, and the others go on."""
    results: dict[str, Any] = {"rates": [], "idle": [], "start": [], "imports": [], "broker_errors": {}}
    for checkout in {part.root, part.base_root or part.root}:
        await asyncio.to_thread(byte_compile, checkout)

    async def on(section: Section) -> None:
        results["rates"] += await _rate_runs(section, seconds=part.seconds, reps=part.reps, progress=progress)
        idle, start = await _other_runs(section, seconds=part.seconds, reps=part.reps, progress=progress)
        results["idle"] += idle
        results["start"] += start

    await on_each_broker(part, workdir, results, progress, on)
    for rep in range(part.reps):
        for contestant in _checkouts(part.base_root, rep):
            root = root_of(contestant, part.root, part.base_root)
            results["imports"].append(await asyncio.to_thread(import_run, root, rep, contestant))
            i = results["imports"][-1]
            progress(
                f"  import sidecar.client {contestant:11} rep {rep + 1}: "
                + (
                    i["error"]
                    if i.get("error")
                    else f"{i['importtime_ms']:.1f} ms (-X importtime), {i['import_cpu_ms']:.1f} ms of CPU"
                )
            )
    for run in results["rates"]:
        run.get("sub", {}).pop("samples", None)  # arrival times every 10 ms: not used here
    return results


def low_rate(
    meta: dict[str, Any],
    brokers: tuple[str, ...],
    contestants: tuple[str, ...],
    *,
    seconds: float,
    reps: int,
    root: Path,
    outs: list[Path],
    base_root: Path | None = None,
    plot: bool = True,
) -> int:
    """Measure, print the tables, and write lowrate.json, lowrate.md and (with `plot`) lowrate.png into each of
    `outs`. With `base_root`, the daemons of that checkout run too (`syncar-base`), alternated with this one's, at
    the low rates, idle and at the start, and so does its client's import."""
    if base_root is not None:
        contestants = ("syncar-base", *contestants)
    meta.update(
        size=SIZE,
        rates=list(RATES),
        publish_seconds=seconds,
        reps=reps,
        brokers=list(brokers),
        contestants=list(contestants),
    )
    part = Part("lowrate", brokers, contestants, reps, seconds, root, base_root)
    title = f"low rates, idle and start on {', '.join(brokers)}"
    drawn = plot_low_rate if plot else None
    results = run_part(
        part, meta, title, measure, outs, summarise=summarise, table=table, markdown=markdown, plot=drawn
    )
    return exit_status(results["rates"] + results["idle"] + results["start"] + results["imports"])
