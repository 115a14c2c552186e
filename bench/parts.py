"""What the benchmark's parts of their own (`--low-rate`, bench.lowrate; `--fleet`, bench.fleet) share: the run of a
part from its heading to its files, a broker's section started and stopped around its runs, and the order of the
runs, every rate of every contestant in each repetition before the next (alternated, so a change in the machine's
load falls on all of them alike), the contestants in reverse every other repetition (so none always runs first)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plan import in_turn, make_plan
from bench.report import write_results
from bench.runner import Section

Progress = Callable[[str], None]
Results = dict[str, Any]


def alternated(reps: int, rates: Iterable[int], contestants: Iterable[str]) -> Iterator[tuple[int, int, str]]:
    """(repetition, rate, contestant) in the order they run: each repetition runs every rate of every contestant,
    in turn (`in_turn`)."""
    rates, contestants = tuple(rates), tuple(contestants)
    for rep in range(reps):
        for rate in rates:
            for contestant in in_turn(contestants, rep):
                yield rep, rate, contestant


@dataclass(frozen=True)
class Part:
    """What a part measures: on which brokers, the contestants of its plan (bench.plan), repetitions of how long,
    syncar from which checkout (and `base_root`'s, if given)."""

    name: str  # of its files: <name>.json and <name>.md
    brokers: tuple[str, ...]
    contestants: tuple[str, ...]
    reps: int
    seconds: float
    root: Path
    base_root: Path | None = None


async def on_each_broker(
    part: Part, workdir: Path, results: Results, progress: Progress, measure: Callable[[Section], Awaitable[None]]
) -> None:
    """`measure` each broker's started section in turn; a broker that cannot start, or whose runs fail, is reported
    in `results["broker_errors"]`, and the others go on."""
    for broker in part.brokers:
        plan = make_plan(
            quick=True, brokers=(broker,), contestants=part.contestants, reps=part.reps, seconds=part.seconds
        )
        section = Section(broker, plan, workdir, part.root, part.base_root)
        try:
            await section.start()
            await measure(section)
        except (RuntimeError, OSError) as exc:
            results["broker_errors"][broker] = str(exc)[:2000]
            progress(f"  {broker}: not measured: {str(exc).splitlines()[0]}")
        finally:
            section.stop()


def said(head: str, run: dict[str, Any], figures: Callable[[dict[str, Any]], str]) -> str:
    """One run's progress line: `head`, then its error or its `figures`."""
    if run.get("error"):
        return head + f"error: {run['error'].splitlines()[0][:160]}"
    return head + figures(run["figures"])


#: Draws a part's results into a PNG at the path; None if it cannot (no matplotlib).
Plot = Callable[[Results, Path], Path | None]


def run_part(
    part: Part,
    meta: dict[str, Any],
    title: str,
    measure: Callable[[Part, Path, Progress], Coroutine[Any, Any, Results]],
    outs: list[Path],
    *,
    summarise: Callable[[Results], Any],
    table: Callable[[Results], str],
    markdown: Callable[[Results], str],
    plot: Plot | None,
) -> Results:
    """Say what is measured, `measure` the part in a temporary directory, `summarise` it, print its `table`, write
    its files (the results as JSON, its `markdown`, its `plot` as a PNG) into each of `outs`; the results, with
    `meta` (how long it took, the load at the end) and the summary."""
    print(f"{meta['command']}: {title}", flush=True)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"syncar-{part.name}-"))
    try:
        results = asyncio.run(measure(part, workdir, lambda line: print(line, flush=True)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta.update(seconds=round(time.monotonic() - began, 1), loadavg_end=os.getloadavg())
    results = {"meta": meta, **results}
    results["summary"] = summarise(results)
    print()
    print(table(results))
    write_results(outs, part.name, results, markdown(results))
    if plot is not None:
        draw(plot, results, outs, part.name)
    return results


def draw(plot: Plot, results: Results, outs: list[Path], name: str) -> None:
    """`plot` the results into `<name>.png` in each of `outs` (nothing if matplotlib is missing), and say where."""
    png = plot(results, outs[0] / f"{name}.png")
    if png is None:
        return
    for out in outs[1:]:
        shutil.copyfile(png, out / png.name)
    print("drew " + ", ".join(str(out / png.name) for out in outs))


def exit_status(measured: list[dict[str, Any]]) -> int:
    """0 if something was measured and no run failed."""
    return 0 if measured and not any(r.get("error") for r in measured) else 1
