"""`python -m bench --scale`: the cost per event as the number of instances grows from 2 to 10.

For each number N, N fresh daemons on one fresh key (syncar codec, one broker, the daemons' --mode): a publisher
on the first offers a fixed rate, a subscriber on each of the others counts what it gets. Each daemon's CPU over
the run, per event it published or received, says whether an instance pays more per event when there are more of
them. N alternates (2, 4, ... 10, then again), so a change in the shared machine's load spreads over every N.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.plan import Case, make_plan
from bench.processes import Daemon, Meter, Worker, python_worker
from bench.report import write_results
from bench.runner import SLACK, Section, load_generators, stop_daemons, worker_spec
from bench.scale_report import scale_figures, scale_markdown, scale_table, summarise_scale

log = logging.getLogger(__name__)

INSTANCES = (2, 4, 6, 8, 10)
RATE = 2_000
SIZE = 256
#: Publishing time per run and repetitions, by default: 15 runs of ~8 s with start and stop, ~2 minutes. CPU time
#: comes in 10 ms ticks: 5 s (10,000 events) make one tick 0.1 s per 100k events.
SECONDS = 5.0
REPS = 3
#: The raw figures each subscriber reports that the scale figures do not use (its arrival times).
BULKY = ("samples", "latencies_us")


async def _measure(section: Section, daemons: list[Daemon], seconds: float, name: str) -> dict[str, Any]:
    """Subscribers on every daemon but the first, then the publisher on the first; each daemon's CPU meanwhile."""
    publishing, *receiving = daemons
    flow_path = section.dir / f"flow-{name}"
    count = int(RATE * seconds) + 1
    # The subscribers share the flow file to see the publisher finish, and their counts overwrite each other's
    # there: so the publisher's window is the whole run (a fixed rate needs none).
    spec = {**worker_spec(Case("scale", SIZE, RATE, seconds), flow_path, count), "window": count}
    # A subscriber's rate only decides whether it times each event (it never paces): told 0, it only counts,
    # which spares the shared cores nine parsers.
    subscriber_spec = {**spec, "role": "sub", "rate": 0}
    meter = Meter(
        {
            "publisher": publishing.pid,
            **{f"receiver_{index}": d.pid for index, d in enumerate(receiving, 1)},
            **section.broker_meter_pids(),
        }
    )
    with load_generators(flow_path) as workers:
        for daemon in receiving:  # all start at once, then each is waited for
            workers.append(
                await Worker.start(
                    python_worker({**subscriber_spec, "target": str(daemon.socket)}), f"{daemon.name}-sub", section.dir
                )
            )
        subscribers = list(workers)
        for subscriber in subscribers:
            await subscriber.ready()
        meter.begin()
        publisher = await Worker.start(
            python_worker({**spec, "role": "pub", "target": str(publishing.socket)}), f"{name}-pub", section.dir
        )
        workers.append(publisher)
        await publisher.ready()
        pub_line = await publisher.result(seconds + SLACK)
        sub_lines = [await subscriber.result(SLACK) for subscriber in subscribers]
    return {
        "pub": pub_line["result"],
        "pub_usage": pub_line["usage"],
        "subs": [{k: v for k, v in line["result"].items() if k not in BULKY} for line in sub_lines],
        "sub_usage": [line["usage"] for line in sub_lines],
        "processes": meter.end(),
    }


async def _run(section: Section, instances: int, rep: int, seconds: float) -> dict[str, Any]:
    """One run with `instances` fresh daemons, stopped after it even if it failed."""
    record: dict[str, Any] = {
        "broker": section.broker,
        "mode": section.plan.mode,
        "instances": instances,
        "rep": rep,
        "started": time.time(),
        "loadavg": os.getloadavg()[0],
    }
    name = f"scale-{rep + 1}-{instances:02d}"
    daemons: list[Daemon] = []
    try:
        daemons = await section.start_daemons(name, instances)
        record.update(await _measure(section, daemons, seconds, name))
    except (RuntimeError, OSError) as exc:
        log.warning("%s: failed: %s", name, exc)
        record["error"] = str(exc)[:4000]
    finally:
        record["daemon_exits"] = stop_daemons(daemons, name)
    record["figures"] = scale_figures(record)
    return record


def _cost(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"  # None: no event to divide by


def _progress(run: dict[str, Any]) -> None:
    figures = run["figures"]
    if run.get("error"):
        text = f"error: {run['error'].splitlines()[0][:160]}"
    else:
        text = (
            f"{figures['sent']:,} events published, {figures['delivered']:,} delivered; CPU s/100k: publisher "
            f"{_cost(figures['publisher_cpu_per_100k'])}, a receiver {_cost(figures['receiver_cpu_per_100k'])}, "
            f"all per delivered {_cost(figures['daemons_cpu_per_100k'])}; lost {figures['lost']:,}"
        )
    print(f"  {run['instances']:2} instances rep {run['rep'] + 1}: {text}", flush=True)


async def _runs(
    broker: str, mode: str, *, seconds: float, reps: int, workdir: Path, root: Path
) -> list[dict[str, Any]]:
    plan = make_plan(quick=True, brokers=(broker,), contestants=("syncar",), reps=reps, seconds=seconds, mode=mode)
    section = Section(broker, plan, workdir, root)
    runs = []
    try:
        await section.start()
        for rep in range(reps):
            for instances in INSTANCES:
                runs.append(await _run(section, instances, rep, seconds))
                _progress(runs[-1])
    finally:
        section.stop()
    return runs


def scale(meta: dict[str, Any], broker: str, *, seconds: float, reps: int, root: Path, outs: list[Path]) -> int:
    """Measure, print the table, and write scale.json and scale.md into each of `outs`."""
    meta.update(broker=broker, rate=RATE, size=SIZE, publish_seconds=seconds, reps=reps, instances=list(INSTANCES))
    print(f"{meta['command']}: {len(INSTANCES) * reps} runs on {broker}, {meta['mode']} mode", flush=True)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="syncar-scale-"))
    try:
        runs = asyncio.run(_runs(broker, meta["mode"], seconds=seconds, reps=reps, workdir=workdir, root=root))
    except (RuntimeError, OSError) as exc:
        print(f"{broker}: not measured: {str(exc).splitlines()[0]}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta.update(seconds=round(time.monotonic() - began, 1), loadavg_end=os.getloadavg())
    results = {"meta": meta, "summary": summarise_scale(runs), "runs": runs}
    print()
    print(scale_table(results))
    write_results(outs, "scale", results, scale_markdown(results))
    return 0 if any(not run.get("error") for run in runs) else 1
