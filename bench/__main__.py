"""`python -m bench`: run the benchmark, print the table, write the JSON and the plot. See docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.meta import checkout_commit, run_meta
from bench.output import RESULTS, outs, report, report_again
from bench.plan import BROKERS, CONTESTANTS, EXTRA_CONTESTANTS, LABELS, MODES, make_plan
from bench.report import derive, summarise
from bench.runner import Priority, run_plan
from bench.scale import REPS, SECONDS, scale

REPO = Path(__file__).resolve().parent.parent


def _list(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}")
        return names

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short windows, 1 repetition, local:// and Redis unless --brokers says otherwise",
    )
    parser.add_argument("--brokers", type=_list(BROKERS), help=f"comma-separated: {', '.join(BROKERS)}")
    parser.add_argument(
        "--contestants",
        type=_list(CONTESTANTS + EXTRA_CONTESTANTS),
        help=f"comma-separated: {', '.join(CONTESTANTS)}; also {', '.join(EXTRA_CONTESTANTS)} (every publish with W3C "
        "trace context), asked for by name only",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="broadcast",
        help="the syncar daemons' --mode (default broadcast). Durable needs a broker and the syncar "
        "codec, so by default it leaves out local:// and the feathers-sync codec. The raw "
        "ceiling and feathers-sync have no durable mode: they run unchanged, as broker pub/sub",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run each broker of --brokers as a local cluster right after its single node (Redis Cluster of "
        "6 nodes, RabbitMQ and NATS of 3, as the tests start them), the syncar contestants only",
    )
    parser.add_argument("--reps", type=int, help="repetitions of each case (default 3, quick 1)")
    parser.add_argument(
        "--seconds", type=float, help="publishing time of every run (default 3 s, 4 s at 1,000 events/s; quick 1 s)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and latest.png go")
    parser.add_argument("--docs", action="store_true", help="also copy the figures and the plot to docs/benchmarks/")
    parser.add_argument(
        "--syncar-root",
        type=Path,
        default=REPO,
        help="run the daemons from this checkout of syncar instead (to measure a change against main)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (it needs matplotlib)")
    instead = parser.add_mutually_exclusive_group()
    instead.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="instead: print the table and redraw the plot of an earlier run's JSON (also of --low-rate, --fleet)",
    )
    instead.add_argument(
        "--profile",
        action="store_true",
        help="instead: profile both daemons with py-spy under load (syncar codec over Redis, or "
        "the first syncar contestant and broker given); broadcast mode only",
    )
    instead.add_argument(
        "--scale",
        action="store_true",
        help="instead: daemons' CPU per event with 2, 4, 6, 8 and 10 instances, one publishing at "
        "2,000 events/s and the others subscribed (syncar codec, --mode, the first broker of "
        "--brokers but local, default redis; 5 s per run, 3 repetitions: ~2 minutes); "
        "writes scale.json and scale.md",
    )
    instead.add_argument(
        "--low-rate",
        action="store_true",
        help="instead: CPU per event of the two daemons at 100 and 1,000 events/s against raw "
        "pub/sub from Python at the same rates, a daemon's CPU and memory with no traffic, its "
        "start time and the Python client's import time (--brokers, default redis, amqp, nats; "
        "--contestants among syncar, syncar-fs, ceiling, default syncar, ceiling; --seconds per "
        "run, default 5; --reps, default 3: ~7 minutes); writes lowrate.json and lowrate.md",
    )
    instead.add_argument(
        "--fleet",
        action="store_true",
        help="instead: three Feathers instances (Node, socket.io) and a socket.io client on each, messages "
        "created round-robin at 100 and 1,000 events/s and as fast as they go, with @syncar/feathers and a "
        "syncar per instance against feathers-sync 3.1.1: CPU per event of apps and daemons, peak RSS, "
        "create-to-created latency (--brokers, default redis, amqp, nats; --seconds per run, default 5; "
        "--reps, default 3: ~10 minutes; needs cd bench/node && npm ci); writes fleet.json and fleet.md",
    )
    parser.add_argument(
        "--base-root",
        type=Path,
        help="also run the daemons of this checkout (syncar codec, `syncar-base`), alternated with those of "
        "--syncar-root, for before-and-after figures from one run (the main run; --low-rate, where its idle, "
        "start and client import run too; and --fleet, where the Node plugin of each checkout runs with its "
        "daemons)",
    )
    parser.add_argument(
        "--rate",
        type=int,
        default=0,
        help="with --profile: offer this many events/s (e.g. 1000) instead of as many as go through; with "
        "--fleet: this rate only (0, the default: 100, 1,000 and as fast as they go)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        help="the main run only: run the benchmark's processes, brokers included, and their sessions' autogroups at "
        "this nice (e.g. -10; below 0 wants root), so that a machine's other work moves its figures less",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _progress(run: dict[str, Any]) -> None:
    figures = derive(run)
    run["figures"] = figures
    if run.get("error"):
        text = f"error: {run['error'].splitlines()[0][:160]}"
    elif run["rate"]:
        text = (
            f"p50 {figures['p50_ms']:.2f} p99 {figures['p99_ms']:.2f} p999 {figures['p999_ms']:.2f} ms"
            f"{'  SATURATED' if figures['saturated'] else ''}"
        )
    else:
        value = figures.get("throughput")
        text = f"{value:,.0f} events/s" if value else "no throughput figure"
    if not run.get("error") and figures.get("lost"):
        text += f"  lost {figures['lost']}"
    print(
        f"  {run['broker']:6} {LABELS[run['contestant']]:30} {run['case']:10} rep {run['rep'] + 1}: {text}", flush=True
    )


def _scale(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    broker = next((b for b in args.brokers or ("redis",) if b != "local"), None)
    if broker is None:
        parser.error("--scale needs a broker: on local:// there is nothing between the daemons to scale")
    return scale(
        run_meta(args, command),
        broker,
        seconds=args.seconds or SECONDS,
        reps=args.reps or REPS,
        root=args.syncar_root.resolve(),
        outs=outs(args),
    )


def _low_rate(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    from bench.lowrate import CONTESTANTS, DEFAULT_CONTESTANTS, REPS, SECONDS, low_rate  # noqa: PLC0415

    if args.mode != "broadcast":
        parser.error("--low-rate measures broadcast mode only")
    contestants = args.contestants or DEFAULT_CONTESTANTS
    if unknown := [c for c in contestants if c not in CONTESTANTS]:
        parser.error(f"--low-rate has no {', '.join(unknown)}: it measures {', '.join(CONTESTANTS)}")
    meta = run_meta(args, command)
    base = args.base_root.resolve() if args.base_root is not None else None
    if base is not None:
        meta.update(base_root=str(base), base_commit=checkout_commit(base))
    return low_rate(
        meta,
        args.brokers or ("redis", "amqp", "nats"),
        contestants,
        seconds=args.seconds or SECONDS,
        reps=args.reps or REPS,
        root=args.syncar_root.resolve(),
        outs=outs(args),
        base_root=base,
        plot=not args.no_plot,
    )


def _fleet(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    from bench.fleet import RATES, REPS, SECONDS, fleet  # noqa: PLC0415

    if args.mode != "broadcast":
        parser.error("--fleet measures broadcast mode only")
    if "local" in (brokers := args.brokers or ("redis", "amqp", "nats")):
        parser.error("--fleet needs a broker: feathers-sync has no local://")
    meta = run_meta(args, command)
    base = args.base_root.resolve() if args.base_root is not None else None
    if base is not None:
        meta.update(base_root=str(base), base_commit=checkout_commit(base))
    return fleet(
        meta,
        brokers,
        seconds=args.seconds or SECONDS,
        reps=args.reps or REPS,
        root=args.syncar_root.resolve(),
        outs=outs(args),
        plot=not args.no_plot,
        base_root=base,
        rates=(args.rate,) if args.rate else RATES,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    command = ("python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    if args.profile and args.mode != "broadcast":
        parser.error("--profile measures broadcast mode only")
    if args.scale:
        return _scale(args, parser, command)
    if args.low_rate:
        return _low_rate(args, parser, command)
    if args.fleet:
        return _fleet(args, parser, command)
    if args.profile:
        from bench.profile import profile  # noqa: PLC0415  (py-spy is needed only here)

        broker = next((b for b in args.brokers or ("redis",) if b != "local"), "local")
        contestant = next((c for c in args.contestants or ("syncar",) if c.startswith("syncar")), "syncar")
        return profile(args.out, args.seconds or 10.0, args.syncar_root.resolve(), broker, contestant, rate=args.rate)
    if args.report is not None:
        return report_again(args)
    base = args.base_root.resolve() if args.base_root is not None else None
    plan = make_plan(
        quick=args.quick,
        brokers=args.brokers,
        contestants=("syncar-base", *(args.contestants or ("syncar",))) if base is not None else args.contestants,
        reps=args.reps,
        seconds=args.seconds,
        mode=args.mode,
        cluster=args.cluster,
    )
    print(f"{command}: {plan.runs()} runs on {', '.join(plan.brokers)}, {plan.mode} mode", flush=True)
    meta = {**run_meta(args, command), "plan": plan.as_dict()}
    if base is not None:
        meta.update(base_root=str(base), base_commit=checkout_commit(base))
    priority = Priority(args.nice) if args.nice is not None else None
    if priority is not None:
        try:
            priority.begin()
        except OSError as exc:  # a nice below the current one without root; the kernel's rate limit on autogroups
            parser.error(f"--nice {args.nice}: {exc}")
        meta.update(nice=args.nice)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="syncar-bench-"))
    try:
        outcome = asyncio.run(run_plan(plan, workdir, _progress, args.syncar_root.resolve(), base, priority=priority))
    finally:
        if priority is not None:
            priority.end()
        shutil.rmtree(workdir, ignore_errors=True)
    meta.update(seconds=round(time.monotonic() - began, 1), loadavg_end=os.getloadavg())
    results = {
        "meta": meta,
        "sections": outcome["sections"],
        "summary": summarise(outcome["runs"]),
        "runs": outcome["runs"],
    }
    code = report(args, results)
    return code if any(not r.get("error") for r in outcome["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
