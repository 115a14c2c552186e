"""What `python -m bench` writes: the main run's table, printed, and its latest.json, latest.md and latest.png in
--out (with --docs, copies in docs/benchmarks/); and `--report`, the same again from an earlier run's JSON, a
--low-rate or --fleet run's by its part's own report."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import orjson

from bench.report import markdown, table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCS = HERE.parent / "docs" / "benchmarks"
#: The parts whose runs `--report` can redraw, by the flag in the command that made them.
PART_FLAGS = {"--low-rate": "lowrate", "--fleet": "fleet"}


def outs(args: argparse.Namespace) -> list[Path]:
    """Where a run's files go: --out, and docs/benchmarks/ too with --docs."""
    return [args.out, DOCS] if args.docs else [args.out]


def report_again(args: argparse.Namespace) -> int:
    """`--report JSON`: the tables and plot of an earlier run, of the main run or of a part."""
    results = orjson.loads(args.report.read_bytes())
    part = next((name for flag, name in PART_FLAGS.items() if flag in results["meta"]["command"].split()), None)
    return report_part(args, results, part) if part else report(args, results)


def report_part(args: argparse.Namespace, results: dict[str, Any], part: str) -> int:
    """`--report` of a --low-rate or --fleet run: its tables summarised again from the runs, its Markdown and (but
    with --no-plot) its PNG written to --out, and with --docs to docs/benchmarks/ too."""
    from bench import fleet_report, lowrate_report  # noqa: PLC0415  (only a part's --report needs them)
    from bench.parts import draw  # noqa: PLC0415
    from bench.parts_plot import plot_fleet, plot_low_rate  # noqa: PLC0415

    module, plot = (lowrate_report, plot_low_rate) if part == "lowrate" else (fleet_report, plot_fleet)
    results["summary"] = module.summarise(results)
    print(module.table(results))
    dirs = outs(args)
    for out in dirs:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{part}.md").write_text(module.markdown(results))
    print("wrote " + ", ".join(str(out / f"{part}.md") for out in dirs))
    if not args.no_plot:
        draw(plot, results, dirs, part)
    return 0


def report(args: argparse.Namespace, results: dict[str, Any]) -> int:
    """Print the table; write latest.json, latest.md and latest.png, and with --docs their copies in docs/
    (results.*, or results-durable.* for a durable run: the page's broadcast figures stay what they are)."""
    mode = results["meta"].get("mode", "broadcast")  # runs from before --mode were all broadcast
    print()
    print(table(results["summary"], mode))
    for broker, section in results["sections"].items():
        if section.get("error"):
            print(f"{broker}: not measured: {section['error'].splitlines()[0]}")
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    if args.report is None:
        written.append(args.out / "latest.json")
        written[-1].write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    written.append(args.out / "latest.md")
    written[-1].write_text(markdown(results["summary"], mode))
    png = None
    if not args.no_plot:
        from bench.plot import plot  # noqa: PLC0415  (matplotlib is optional)

        png = plot(results, args.out / "latest.png")
        if png is not None:
            written.append(png)
    if args.docs:
        DOCS.mkdir(parents=True, exist_ok=True)
        for run in results["runs"]:
            run.get("sub", {}).pop("samples", None)  # the per-10 ms counts: large, and in latest.json anyway
        stem = DOCS / ("results" if mode == "broadcast" else f"results-{mode}")
        stem.with_suffix(".json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        stem.with_suffix(".md").write_text(markdown(results["summary"], mode))
        written += [stem.with_suffix(".json"), stem.with_suffix(".md")]
        if png is not None:
            shutil.copyfile(png, stem.with_suffix(".png"))
            written.append(stem.with_suffix(".png"))
    seconds = results["meta"].get("seconds")
    print(f"\n{f'{seconds:.0f} s; ' if seconds else ''}wrote " + ", ".join(str(p) for p in written))
    return 0
