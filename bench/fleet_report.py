"""The figures of `python -m bench --fleet` (bench.fleet measures them): medians over repetitions, syncar against
feathers-sync within each repetition, the tables, and the issue's targets next to what was measured."""

from __future__ import annotations

from typing import Any

from bench.parts_report import TARGETS_HEAD, Block, broker_notes, conditions, latency, paired, per_rate, ratio
from bench.parts_report import markdown as markdown_of
from bench.parts_report import text as text_of
from bench.plan import BROKER_LABELS
from bench.report import median, num

LABELS = {
    "syncar": "@syncar/feathers + syncar",
    "syncar-base": "the same, --base-root",
    "feathers-sync": "feathers-sync 3.1.1",
}
FIGURES = (
    "achieved",
    "app_us",
    "daemon_us",
    "all_us",
    "broker_us",
    "clients_us",
    "peak_rss_mib",
    "p50_ms",
    "p99_ms",
    "to_app_ms",
    "to_app_p99_ms",
    "app_to_app_ms",
    "app_to_app_p99_ms",
    "to_daemon_ms",
    "to_daemon_p99_ms",
    "daemon_to_app_ms",
    "daemon_to_app_p99_ms",
    "apps_gc_pauses",
    "apps_gc_ms",
    "apps_gc_max_ms",
    "apps_gc_full",
    "lost",
    "create_errors",
    "late",
    "missed_by_apps",
    "told",
    "untold",
)
#: The issue's targets: apps and daemons' CPU per event at most this times feathers-sync's at 1,000 events/s (below
#: it on NATS and at the highest rate); p50 within this many ms of feathers-sync's, p99 no worse.
MAX_RATIO_1000 = 1.3
MAX_P50_MS_MORE = 0.5


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Medians per broker, rate and contestant; for syncar, the medians over repetitions of its figures over (or,
    for p50, minus) feathers-sync's in the same repetition."""
    summary = []
    for entry, members in per_rate(results["runs"], FIGURES):
        if entry["contestant"] != "feathers-sync":
            pairs = paired(results["runs"], members, "feathers-sync")
            for name in ("all_us", "peak_rss_mib", "p99_ms"):
                entry[f"{name}_ratio"] = median([ratio(mine.get(name), other.get(name)) for mine, other in pairs])
            entry["p50_ms_more"] = median(
                [mine["p50_ms"] - other["p50_ms"] for mine, other in pairs if other.get("p50_ms") is not None]
            )
        summary.append(entry)
    return summary


HEAD = (
    "broker",
    "events/s offered",
    "contestant",
    "events/s achieved",
    "apps µs/event",
    "daemons µs/event",
    "apps + daemons µs/event",
    "vs feathers-sync",
    "broker µs/event",
    "peak RSS MiB, all",
    "p50/p99 ms",
    "lost",
)


def _rows(summary: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for e in summary:
        ratio = e.get("all_us_ratio")
        found.append(
            (
                BROKER_LABELS.get(e["broker"], e["broker"]),
                f"{e['rate']:,}" if e["rate"] else "max",
                LABELS[e["contestant"]],
                num(e["achieved"]),
                num(e["app_us"]),
                "-" if e["contestant"] == "feathers-sync" else num(e["daemon_us"]),
                num(e["all_us"]),
                "-" if ratio is None else f"{ratio:.2f}x",
                num(e["broker_us"]),
                num(e["peak_rss_mib"]),
                latency(e),
                num(e["lost"]),
            )
        )
    return found


HOPS_HEAD = (
    "broker",
    "events/s offered",
    "contestant",
    "create to its app, p50/p99 ms",
    "its app to each other app's emit, p50/p99 ms",
    "of which its app to its daemon's stamp, p50/p99 ms",
    "of which the stamp to each other app's emit, p50/p99 ms",
    "create to each other client, p50/p99 ms",
    "the apps' GC: pauses, ms, longest ms, full",
)


def _pair(e: dict[str, Any], name: str) -> str:
    p50, p99 = e.get(f"{name}_ms"), e.get(f"{name}_p99_ms")
    return "-" if p50 is None else f"{p50:.2f}/{p99:.2f}" if p99 is not None else f"{p50:.2f}"


def hops(summary: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Where the latency goes, where the apps reported it (runs before they did have none)."""
    return [
        (
            BROKER_LABELS.get(e["broker"], e["broker"]),
            f"{e['rate']:,}" if e["rate"] else "max",
            LABELS[e["contestant"]],
            _pair(e, "to_app"),
            _pair(e, "app_to_app"),
            _pair(e, "to_daemon"),
            _pair(e, "daemon_to_app"),
            "-" if e["p50_ms"] is None else f"{e['p50_ms']:.2f}/{e['p99_ms']:.2f}",
            "-"
            if e.get("apps_gc_pauses") is None
            else f"{e['apps_gc_pauses']:.0f}, {e['apps_gc_ms']:.1f}, {e['apps_gc_max_ms']:.1f}, "
            f"{e['apps_gc_full']:.0f}",
        )
        for e in summary
        if e.get("app_to_app_ms") is not None
    ]


LOSSES_HEAD = (
    "broker",
    "events/s offered",
    "contestant",
    "deliveries lost",
    "late (after 1 s of silence: lost by the old bound)",
    "missed by the apps",
    "told to the apps",
    "not told",
)


def losses(summary: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Where deliveries were lost, and whether the apps were told, where any were (runs before the apps said what they
    were told have none)."""
    return [
        (
            BROKER_LABELS.get(e["broker"], e["broker"]),
            f"{e['rate']:,}" if e["rate"] else "max",
            LABELS[e["contestant"]],
            *(num(e[name]) for name in ("lost", "late", "missed_by_apps", "told", "untold")),
        )
        for e in summary
        if e.get("untold") is not None and (e["lost"] or e["late"] or e["missed_by_apps"])
    ]


def targets(summary: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The issue's fleet targets, per broker, as measured (ratios within each repetition, medians)."""
    found: list[tuple[str, ...]] = []
    for e in summary:
        if e["contestant"] != "syncar" or e["rate"] not in (1_000, 0):
            continue
        broker = BROKER_LABELS.get(e["broker"], e["broker"])
        at = "1,000 events/s" if e["rate"] else "the highest rate"
        bound = MAX_RATIO_1000 if e["rate"] and e["broker"] != "nats" else 1.0
        cpu = e.get("all_us_ratio")
        found.append(
            (
                f"{at}, {broker}: apps + daemons' CPU per event {'at most' if bound > 1 else 'below'} {bound:.1f}x "
                "feathers-sync's",
                "-" if cpu is None else f"{cpu:.2f}x",
                "-" if cpu is None else ("yes" if cpu <= bound and (bound > 1 or cpu < 1) else "no"),
            )
        )
        if e["rate"]:
            more, p99 = e.get("p50_ms_more"), e.get("p99_ms_ratio")
            found.append(
                (
                    f"{at}, {broker}: p50 within {MAX_P50_MS_MORE} ms of feathers-sync's, p99 no worse",
                    "-" if more is None or p99 is None else f"p50 {more:+.2f} ms, p99 {p99:.2f}x",
                    "-" if more is None or p99 is None else ("yes" if more <= MAX_P50_MS_MORE and p99 <= 1 else "no"),
                )
            )
    return found


def heading(meta: dict[str, Any]) -> str:
    return (
        f"{meta['instances']} Feathers instances and a socket.io client on each, {meta['size']} B messages created "
        f"round-robin, {meta['publish_seconds']:g} s per run (max: at most {meta['window']} events in flight); "
        f"medians of {meta['reps']} alternated repetitions; CPU per event created, from the clients' warm-up on; "
        f'"vs feathers-sync": apps + daemons over feathers-sync\'s apps in the same repetition (median of those '
        f"ratios); peak RSS: the sum of every app's and daemon's; latency: create to each other client's created; "
        + conditions(meta)
        + (f", --base-root (plugin and daemons) at {meta['base_commit']}" if meta.get("base_commit") else "")
    )


def _notes(results: dict[str, Any]) -> list[str]:
    return broker_notes(results) + [
        f"{e['broker']} {e['contestant']} {e['rate'] or 'max'}: {error}"
        for e in results["summary"]
        for error in e["errors"]
    ]


def _blocks(summary: list[dict[str, Any]]) -> list[Block]:
    blocks: list[Block] = [(HEAD, _rows(summary), 3)]
    if found := hops(summary):
        blocks.append((HOPS_HEAD, found, 3))
    if found := losses(summary):
        blocks.append((LOSSES_HEAD, found, 3))
    return [*blocks, (TARGETS_HEAD, targets(summary), 1)]


def table(results: dict[str, Any]) -> str:
    return text_of(heading(results["meta"]), _blocks(results["summary"]), _notes(results))


def markdown(results: dict[str, Any]) -> str:
    return markdown_of(heading(results["meta"]), _blocks(results["summary"]), _notes(results))
