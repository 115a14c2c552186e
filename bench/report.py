"""Figures from raw runs: per-run throughput and latency, medians over repetitions, ratios, the terminal table."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import orjson

from bench.plan import BROKER_LABELS, LABELS

#: Quantiles kept of each run's latencies (the CDF in the plot is drawn from them).
QUANTILES = (*(i / 100 for i in range(100)), 0.995, 0.999, 0.9995, 0.9999, 1.0)
#: A run at a fixed rate is saturated (its latency is not that of the offered rate) if it sent less than this
#: share of what was offered, lagged this far behind its schedule, or lost events.
SATURATED_SHARE = 0.95
SATURATED_LAG = 0.1


def write_results(outs: list[Path], name: str, results: dict[str, Any], markdown_text: str) -> None:
    """Write `<name>.json` (every figure) and `<name>.md` (the tables) into each of `outs`, and say where."""
    for out in outs:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        (out / f"{name}.md").write_text(markdown_text)
    print(f"\n{results['meta']['seconds']:.0f} s; wrote " + ", ".join(f"{out}/{name}.{{json,md}}" for out in outs))


def quantile(ordered: list[int], q: float) -> float:
    if not ordered:
        return float("nan")
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def throughput(samples: list[list[float]], received: int) -> float | None:
    """Events/s between the moments 10% and 90% of the received events had arrived (no ramp-up, no tail)."""
    if received < 20 or len(samples) < 3:
        return None
    low, high = 0.1 * received, 0.9 * received
    t_low = next(t for t, n in samples if n >= low)
    n_low = next(n for t, n in samples if n >= low)
    t_high, n_high = next((t, n) for t, n in samples if n >= high)
    if t_high <= t_low:
        return None
    return (n_high - n_low) / (t_high - t_low)


def derive(run: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run; the raw per-event latencies are replaced by quantiles."""
    if run.get("error"):
        return {}
    sub, pub, processes = run["sub"], run["pub"], run["processes"]
    received, sent = sub["received"], pub["sent"]
    figures: dict[str, Any] = {
        "sent": sent,
        "received": received,
        "lost": max(sent - received, 0),
        "publish_errors": pub.get("errors", 0),
    }
    daemon_cpu = sum(p["cpu_s"] for name, p in processes.items() if name.startswith("daemon"))
    broker_cpu = sum(p["cpu_s"] for name, p in processes.items() if name.startswith("broker"))
    app_cpu = run["pub_usage"]["cpu_s"] + run["sub_usage"]["cpu_s"]
    per = 100_000 / received if received else float("nan")
    figures["daemon_cpu_per_100k"] = daemon_cpu * per if run["contestant"].startswith("syncar") else None
    figures["broker_cpu_per_100k"] = broker_cpu * per
    figures["client_cpu_per_100k"] = app_cpu * per
    hwm = [p["hwm_kib"] for name, p in processes.items() if name.startswith("daemon")]
    figures["daemon_peak_rss_mib"] = max(hwm) / 1024 if hwm else None
    # Each of the two daemons apart: they hold different things at the peak (the outbox; the frames for the app).
    if "daemon_a" in processes:
        figures["publisher_peak_rss_mib"] = processes["daemon_a"]["hwm_kib"] / 1024
        figures["receiver_peak_rss_mib"] = processes["daemon_b"]["hwm_kib"] / 1024
    figures["client_peak_rss_mib"] = max(run["pub_usage"]["maxrss_kib"], run["sub_usage"]["maxrss_kib"]) / 1024
    if run["rate"] == 0:
        figures["throughput"] = throughput(sub["samples"], received)
    else:
        ordered = sorted(sub.pop("latencies_us"))
        figures["latency_quantiles_ms"] = [quantile(ordered, q) / 1000 for q in QUANTILES]
        for label, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
            figures[f"{label}_ms"] = quantile(ordered, q) / 1000
        achieved = sent / pub["elapsed"] if pub["elapsed"] else 0.0
        figures["offered_rate_achieved"] = achieved
        figures["saturated"] = (
            achieved < SATURATED_SHARE * run["rate"] or pub["max_lag"] > SATURATED_LAG or received < sent
        )
    return figures


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def medians(members: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
    """How many repetitions ran, how many gave figures, their errors, and the median of each figure named."""
    figures = [m["figures"] for m in members if m.get("figures")]
    entry: dict[str, Any] = {
        "runs": len(members),
        "ok": len(figures),
        "errors": sorted({m["error"][:200] for m in members if m.get("error")}),
    }
    entry.update({name: median([f.get(name) for f in figures]) for name in names})
    return entry


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repetitions per broker, contestant and case, and the ratios the issue asks for."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["broker"], run["contestant"], run["case"]), []).append(run)
    summary: dict[str, Any] = {}
    for (broker, contestant, case), members in groups.items():
        figures = [m["figures"] for m in members if m.get("figures")]
        entry = medians(
            members,
            (
                "throughput",
                "p50_ms",
                "p99_ms",
                "p999_ms",
                "daemon_cpu_per_100k",
                "broker_cpu_per_100k",
                "client_cpu_per_100k",
                "daemon_peak_rss_mib",
                "publisher_peak_rss_mib",
                "receiver_peak_rss_mib",
                "client_peak_rss_mib",
                "lost",
            ),
        )
        if figures and "saturated" in figures[0]:
            entry["saturated"] = sum(bool(f["saturated"]) for f in figures) > len(figures) / 2
        values = [f["throughput"] for f in figures if f.get("throughput")]
        if values:
            entry["throughput_min"], entry["throughput_max"] = min(values), max(values)
        summary.setdefault(broker, {}).setdefault(contestant, {})[case] = entry
    for contestants in summary.values():
        ratios: dict[str, Any] = {}
        for mine in ("syncar", "syncar-fs"):
            for other in ("ceiling", "feathers-sync"):
                for case in ("tp-256", "tp-4096"):
                    a = contestants.get(mine, {}).get(case, {}).get("throughput")
                    b = contestants.get(other, {}).get(case, {}).get("throughput")
                    if a and b:
                        ratios[f"{mine}/{other} {case}"] = a / b
                for case in ("lat-1000", "lat-10000"):
                    a = contestants.get(mine, {}).get(case, {}).get("p99_ms")
                    b = contestants.get(other, {}).get(case, {}).get("p99_ms")
                    if a is not None and b is not None:
                        ratios[f"{mine}-{other} p99 ms {case}"] = a - b
        contestants["ratios"] = ratios
    return summary


def num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def rss(cases: dict[str, Any]) -> str:
    """Peak RSS of the daemons in the two throughput runs: 256 B / 4 KiB."""
    values = [cases.get(case, {}).get("daemon_peak_rss_mib") for case in ("tp-256", "tp-4096")]
    return "-" if all(v is None for v in values) else "/".join(num(v, 0) for v in values)


HEAD = (
    "broker",
    "contestant",
    "events/s 256 B",
    "events/s 4 KiB",
    "p50/p99/p999 ms at 1k/s",
    "p50/p99/p999 ms at 10k/s",
    "daemons' CPU s/100k events",
    "daemon peak RSS MiB 256 B/4 KiB",
)


def rows(summary: dict[str, Any]) -> tuple[list[tuple[str, ...]], list[str]]:
    """One row per broker and contestant (medians over repetitions), and notes: errors, then ratios."""
    found: list[tuple[str, ...]] = []
    notes: list[str] = []
    for broker, contestants in summary.items():
        for contestant, cases in contestants.items():
            if contestant == "ratios":
                continue

            def lat(case: str, cases: dict[str, Any] = cases) -> str:
                entry = cases.get(case, {})
                if entry.get("p50_ms") is None:
                    return "-"
                text = "/".join(num(entry[k], 2) for k in ("p50_ms", "p99_ms", "p999_ms"))
                return text + (" (sat.)" if entry.get("saturated") else "")

            tp = cases.get("tp-256", {})
            found.append(
                (
                    BROKER_LABELS.get(broker, broker),
                    LABELS.get(contestant, contestant),
                    num(tp.get("throughput")),
                    num(cases.get("tp-4096", {}).get("throughput")),
                    lat("lat-1000"),
                    lat("lat-10000"),
                    num(tp.get("daemon_cpu_per_100k"), 2),
                    rss(cases),
                )
            )
            for entry in cases.values():
                notes.extend(f"{broker} {contestant}: {e}" for e in entry.get("errors", []))
    return found, sorted(set(notes), key=notes.index)


def ratio_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for broker, contestants in summary.items():
        ratios = contestants.get("ratios", {})
        if ratios:
            lines.append(
                f"{BROKER_LABELS.get(broker, broker)} ratios: "
                + ", ".join(f"{k} {v:+.2f}" if " ms " in k else f"{k} {v:.2f}x" for k, v in ratios.items())
            )
    return lines


def rss_lines(summary: dict[str, Any]) -> list[str]:
    """Peak RSS of the publishing and of the receiving daemon apart, where there are two (not on local://)."""
    lines = []
    for broker, contestants in summary.items():
        for contestant, cases in contestants.items():
            pairs = [
                f"{size} {num(entry['publisher_peak_rss_mib'], 1)} / {num(entry['receiver_peak_rss_mib'], 1)}"
                for case, size in (("tp-256", "256 B"), ("tp-4096", "4 KiB"))
                if (entry := cases.get(case, {})).get("publisher_peak_rss_mib") is not None
            ]
            if pairs:
                lines.append(
                    f"{BROKER_LABELS.get(broker, broker)} {LABELS.get(contestant, contestant)}: peak RSS MiB of the "
                    f"publishing / receiving daemon, {', '.join(pairs)}"
                )
    return lines


def mode_heading(mode: str) -> str:
    """Which mode the daemons ran in, above every table: a durable run must never pass for a broadcast one."""
    return (
        f"syncar daemons in {mode} mode; raw pub/sub and feathers-sync are broker pub/sub in every run "
        "(they have no durable mode)"
    )


def aligned(head: tuple[str, ...], body: list[tuple[str, ...]], left: int) -> list[str]:
    """A terminal table: the first `left` columns aligned left, the figures right."""
    widths = [max(len(r[i]) for r in (head, *body)) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in (head, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def markdown_table(head: tuple[str, ...], body: list[tuple[str, ...]], left: int) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * left + "---:|" * (len(head) - left)]
    return lines + ["| " + " | ".join(r) + " |" for r in body]


def table(summary: dict[str, Any], mode: str) -> str:
    """The terminal table."""
    found, notes = rows(summary)
    return "\n".join(
        [mode_heading(mode), "", *aligned(HEAD, found, 2), "", *notes, *ratio_lines(summary), *rss_lines(summary)]
    )


def markdown(summary: dict[str, Any], mode: str) -> str:
    """The same figures as Markdown tables, for docs/benchmarks.md."""
    found, notes = rows(summary)
    lines = [f"*{mode_heading(mode)}.*", "", *markdown_table(HEAD, found, 2)]
    ratio_head = (
        "broker",
        "codec",
        "throughput vs raw 256 B / 4 KiB",
        "throughput vs feathers-sync 256 B / 4 KiB",
        "p99 added over raw, ms, at 1k/s / 10k/s",
        "p99 vs feathers-sync, ms, at 1k/s / 10k/s",
    )
    ratio_lines = []
    for broker, contestants in summary.items():
        ratios = contestants.get("ratios", {})
        for mine, codec in (("syncar", "syncar"), ("syncar-fs", "feathers-sync")):
            if not any(name.startswith((f"{mine}/", f"{mine}-")) for name in ratios):
                continue  # nothing to compare it with in this run

            def pair(kind: str, other: str, ratios: dict[str, Any] = ratios, mine: str = mine) -> str:
                if kind == "tp":
                    values = [ratios.get(f"{mine}/{other} {case}") for case in ("tp-256", "tp-4096")]
                    return " / ".join("-" if v is None else f"{v:.2f}x" for v in values)
                values = [ratios.get(f"{mine}-{other} p99 ms {case}") for case in ("lat-1000", "lat-10000")]
                return " / ".join("-" if v is None else f"{v:+.2f}" for v in values)

            ratio_lines.append(
                f"| {BROKER_LABELS.get(broker, broker)} | {codec} | {pair('tp', 'ceiling')} | "
                f"{pair('tp', 'feathers-sync')} | {pair('lat', 'ceiling')} | "
                f"{pair('lat', 'feathers-sync')} |"
            )
    if ratio_lines:
        lines += ["", "| " + " | ".join(ratio_head) + " |", "|---|---|---:|---:|---:|---:|", *ratio_lines]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    if rss := rss_lines(summary):
        lines += ["", *(f"- {line}" for line in rss)]
    return "\n".join(lines) + "\n"
