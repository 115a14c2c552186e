"""The figures of `python -m bench --low-rate` (bench.lowrate measures them): medians over repetitions, the ratios
to the raw ceiling within each repetition, the tables, and the issue's targets next to what was measured."""

from __future__ import annotations

from typing import Any

from bench.parts_report import TARGETS_HEAD, Block, broker_notes, conditions, groups, latency, paired, per_rate, ratio
from bench.parts_report import markdown as markdown_of
from bench.parts_report import text as text_of
from bench.plan import BROKER_LABELS
from bench.report import median, num

#: The issue's targets: daemons' CPU per event at most this times the raw pair's; idle RSS, start, client import.
MAX_RATIO = 1.0
MAX_IDLE_RSS_MB = 40.0
MAX_START_MS = 300.0
MAX_IMPORT_MS = 50.0
MIB_PER_MB = 1e6 / 2**20

LABELS = {
    "syncar": "syncar daemons, syncar codec",
    "syncar-fs": "syncar daemons, feathers-sync codec",
    "ceiling": "raw pub/sub, Python",
    "syncar-base": "syncar daemons, syncar codec, --base-root",
}
#: The checkouts whose idle, start and import are measured.
CHECKOUTS = {"syncar": "this checkout", "syncar-base": "--base-root"}
RATE_FIGURES = ("pub_us", "sub_us", "both_us", "pub_wakeups", "sub_wakeups", "both_wakeups", "p50_ms", "p99_ms", "lost")


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Medians per broker, rate and contestant; for syncar, the median over repetitions of the ratio of its
    daemons' CPU per event to the raw publisher's and subscriber's in the same repetition."""
    rates = []
    for entry, members in per_rate(results["rates"], RATE_FIGURES):
        if entry["contestant"] != "ceiling":
            pairs = paired(results["rates"], members, "ceiling")
            entry["ratio_to_raw"] = median([ratio(mine.get("both_us"), raw.get("both_us")) for mine, raw in pairs])
        rates.append(entry)
    # Runs of before the idle, start and import runs had contestants were all of syncar (this checkout).
    runs = {part: [{"contestant": "syncar", **r} for r in results[part]] for part in ("idle", "start", "imports")}
    idle = [
        {
            "broker": broker,
            "contestant": contestant,
            "runs": len(members),
            "errors": sorted({m["error"][:200] for m in members if m.get("error")}),
            **{
                name: median([m.get(name) for m in members])
                for name in ("cpu_ms_per_s", "wakeups_per_s", "rss_mib", "scraped_rss_mib", "hwm_mib")
            },
        }
        for (broker, contestant), members in groups(runs["idle"], "broker", "contestant").items()
    ]
    start = []
    for (broker, contestant), members in groups(runs["start"], "broker", "contestant").items():
        values = [m["start_ms"] for m in members if "start_ms" in m]
        start.append(
            {
                "broker": broker,
                "contestant": contestant,
                "runs": len(members),
                "start_ms": median(list(values)),
                "start_ms_min": min(values, default=None),
                "start_ms_max": max(values, default=None),
                "start_cpu_ms": median([m.get("start_cpu_ms") for m in members]),
                "errors": sorted({m["error"][:200] for m in members if m.get("error")}),
            }
        )
    imports = {
        contestant: {
            "importtime_ms": median([i.get("importtime_ms") for i in members]),
            "import_cpu_ms": median([i.get("import_cpu_ms") for i in members]),
            "errors": sorted({i["error"] for i in members if i.get("error")}),
        }
        for (contestant,), members in groups(runs["imports"], "contestant").items()
    }
    none: dict[str, Any] = {"importtime_ms": None, "import_cpu_ms": None, "errors": ["not measured"]}
    return {
        "rates": rates,
        "idle": idle,
        "start": start,
        "import": imports.get("syncar", none),
        "import_base": imports.get("syncar-base"),
    }


RATE_HEAD = (
    "broker",
    "events/s",
    "contestant",
    "publishing side µs/event",
    "receiving side µs/event",
    "both µs/event",
    "vs raw",
    "wake-ups/event pub/sub",
    "p50/p99 ms",
    "lost",
)


def _rate_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for e in summary["rates"]:
        to_raw = e.get("ratio_to_raw")
        if e["pub_wakeups"] is not None:
            wakeups = f"{num(e['pub_wakeups'], 2)}/{num(e['sub_wakeups'], 2)}"
        else:  # local://: one daemon is both sides
            wakeups = "-" if e["both_wakeups"] is None else f"{num(e['both_wakeups'], 2)} (one daemon)"
        found.append(
            (
                BROKER_LABELS.get(e["broker"], e["broker"]),
                f"{e['rate']:,}",
                LABELS[e["contestant"]],
                num(e["pub_us"]),
                num(e["sub_us"]),
                num(e["both_us"]),
                "-" if to_raw is None else f"{to_raw:.2f}x",
                wakeups,
                latency(e),
                num(e["lost"]),
            )
        )
    return found


IDLE_HEAD = (
    "broker",
    "daemon",
    "idle CPU ms/s",
    "idle wake-ups/s",
    "idle RSS MiB",
    "idle RSS MiB, /metrics read once",
    "peak RSS MiB since start",
    "start ms to a welcome, median (min-max)",
    "start CPU ms",
)


def _idle_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    starts = {(e["broker"], e["contestant"]): e for e in summary["start"]}
    found: list[tuple[str, ...]] = []
    for e in summary["idle"]:
        s = starts.get((e["broker"], e["contestant"]), {})
        start = (
            "-"
            if s.get("start_ms") is None
            else (f"{s['start_ms']:.0f} ({s['start_ms_min']:.0f}-{s['start_ms_max']:.0f})")
        )
        found.append(
            (
                BROKER_LABELS.get(e["broker"], e["broker"]),
                CHECKOUTS[e["contestant"]],
                num(e["cpu_ms_per_s"], 2),
                num(e["wakeups_per_s"], 1),
                num(e["rss_mib"], 1),
                num(e.get("scraped_rss_mib"), 1),
                num(e["hwm_mib"], 1),
                start,
                num(s.get("start_cpu_ms")),
            )
        )
    return found


def _import_line(summary: dict[str, Any]) -> str:
    lines = []
    for key, contestant in (("import_base", "syncar-base"), ("import", "syncar")):
        i = summary.get(key)
        if i is None:
            continue
        if i["importtime_ms"] is None:
            lines.append(f"import sidecar.client, {CHECKOUTS[contestant]}: not measured: " + "; ".join(i["errors"]))
            continue
        lines.append(
            f"import sidecar.client, {CHECKOUTS[contestant]}: {i['importtime_ms']:.1f} ms by python -X importtime "
            f"(cumulative wall time), {i['import_cpu_ms']:.1f} ms of CPU time"
        )
    return "\n\n".join(lines)


def targets(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """(target, measured, met?) for each of the issue's targets this run measured."""
    found: list[tuple[str, ...]] = []
    for e in summary["rates"]:
        if e["contestant"] == "syncar" and e.get("ratio_to_raw") is not None:
            found.append(
                (
                    f"{e['rate']:,} events/s, {BROKER_LABELS.get(e['broker'], e['broker'])}: daemons' CPU "
                    f"per event at most {MAX_RATIO:.1f}x the raw pair's",
                    f"{e['ratio_to_raw']:.2f}x",
                    "yes" if e["ratio_to_raw"] <= MAX_RATIO else "no",
                )
            )
    for e in summary["idle"]:
        if e["contestant"] == "syncar" and e["rss_mib"] is not None:
            found.append(
                (
                    f"idle RSS under {MAX_IDLE_RSS_MB:.0f} MB, {BROKER_LABELS.get(e['broker'], e['broker'])}",
                    f"{e['rss_mib'] / MIB_PER_MB:.1f} MB",
                    "yes" if e["rss_mib"] / MIB_PER_MB < MAX_IDLE_RSS_MB else "no",
                )
            )
    for e in summary["start"]:
        if e["contestant"] == "syncar" and e["start_ms"] is not None:
            found.append(
                (
                    f"start under {MAX_START_MS:.0f} ms, {BROKER_LABELS.get(e['broker'], e['broker'])}",
                    f"{e['start_ms']:.0f} ms",
                    "yes" if e["start_ms"] < MAX_START_MS else "no",
                )
            )
    if (ms := summary["import"]["importtime_ms"]) is not None:
        found.append(
            (
                f"the Python client imports in under {MAX_IMPORT_MS:.0f} ms",
                f"{ms:.1f} ms",
                "yes" if ms < MAX_IMPORT_MS else "no",
            )
        )
    return found


def _notes(summary: dict[str, Any], results: dict[str, Any]) -> list[str]:
    notes = broker_notes(results)
    for part in ("rates", "idle", "start"):
        notes += [
            f"{e['broker']} {e.get('contestant', '')} {part}: {error}" for e in summary[part] for error in e["errors"]
        ]
    return notes


def heading(meta: dict[str, Any]) -> str:
    return (
        f"{meta['size']} B events at fixed rates, {meta['publish_seconds']:g} s per run; idle runs as long; "
        f'medians of {meta["reps"]} alternated repetitions; "vs raw": the syncar daemons\' CPU per event over the '
        f"raw publisher's and subscriber's in the same repetition (median of those ratios); "
        + conditions(meta)
        + (f", --base-root at {meta['base_commit']}" if meta.get("base_commit") else "")
    )


def _blocks(summary: dict[str, Any]) -> list[Block]:
    return [
        (RATE_HEAD, _rate_rows(summary), 3),
        (IDLE_HEAD, _idle_rows(summary), 1),
        _import_line(summary),
        (TARGETS_HEAD, targets(summary), 1),
    ]


def table(results: dict[str, Any]) -> str:
    summary = results["summary"]
    return text_of(heading(results["meta"]), _blocks(summary), _notes(summary, results))


def markdown(results: dict[str, Any]) -> str:
    summary = results["summary"]
    return markdown_of(heading(results["meta"]), _blocks(summary), _notes(summary, results))
