"""The figures of `python -m bench --scale` (bench.scale measures them): each run's CPU per event of the publishing
daemon, of a receiving one and of all of them, medians over repetitions by number of instances, and the tables."""

from __future__ import annotations

from typing import Any

from bench.plan import BROKER_LABELS
from bench.report import aligned, markdown_table, median, medians, num

SCALE_FIGURES = (
    "published_rate",
    "publisher_cpu_per_100k",
    "receiver_cpu_per_100k",
    "daemons_cpu_per_100k",
    "broker_cpu_per_100k",
    "lost",
    "daemon_peak_rss_mib",
)
SCALE_HEAD = (
    "instances",
    "published/s",
    "publisher's CPU s/100k sent",
    "a receiver's CPU s/100k received",
    "all daemons' CPU s/100k delivered",
    "broker CPU s/100k delivered",
    "lost",
    "peak RSS MiB",
)


def _per_100k(cpu_s: float, events: int) -> float | None:
    return cpu_s * 100_000 / events if events else None


def scale_figures(run: dict[str, Any]) -> dict[str, Any]:
    """The figures of one --scale run: the publishing daemon's CPU per event it published, each receiving
    daemon's per event it received (their median), and all daemons' together per event delivered to an app."""
    if run.get("error"):
        return {}
    pub, processes = run["pub"], run["processes"]
    sent = pub["sent"]
    received = [sub["received"] for sub in run["subs"]]
    publisher = processes["publisher"]
    receivers = [processes[f"receiver_{index}"] for index in range(1, len(received) + 1)]
    daemons = [publisher, *receivers]
    delivered = sum(received)
    broker_cpu = sum(p["cpu_s"] for name, p in processes.items() if name.startswith("broker"))
    return {
        "sent": sent,
        "delivered": delivered,
        "published_rate": sent / pub["elapsed"] if pub["elapsed"] else None,
        "lost": sum(max(sent - count, 0) for count in received),
        "publisher_cpu_per_100k": _per_100k(publisher["cpu_s"], sent),
        "receiver_cpu_per_100k": median(
            [_per_100k(p["cpu_s"], count) for p, count in zip(receivers, received, strict=True)]
        ),
        "daemons_cpu_per_100k": _per_100k(sum(p["cpu_s"] for p in daemons), delivered),
        "broker_cpu_per_100k": _per_100k(broker_cpu, delivered),
        "daemon_peak_rss_mib": max(p["hwm_kib"] for p in daemons) / 1024,
    }


def summarise_scale(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over repetitions, one entry per number of instances, fewest first."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["instances"], []).append(run)
    return [
        {"instances": instances, **medians(members, SCALE_FIGURES)} for instances, members in sorted(groups.items())
    ]


def scale_heading(meta: dict[str, Any]) -> str:
    reps = meta["reps"]
    return (
        f"daemons' CPU per event by number of instances: {BROKER_LABELS.get(meta['broker'], meta['broker'])}, "
        f"syncar codec, {meta['mode']} mode; an app on the first instance publishes {meta['rate']:,} events/s "
        f"of {meta['size']} B for {meta['publish_seconds']:g} s, one on each other instance receives them "
        f'("a receiver": the median instance); peak RSS of the largest daemon; '
        f"{f'medians of {reps} repetitions' if reps > 1 else '1 repetition'}"
    )


def _scale_rows(summary: list[dict[str, Any]]) -> tuple[list[tuple[str, ...]], list[str]]:
    found: list[tuple[str, ...]] = [
        (
            str(e["instances"]),
            num(e["published_rate"]),
            num(e["publisher_cpu_per_100k"], 2),
            num(e["receiver_cpu_per_100k"], 2),
            num(e["daemons_cpu_per_100k"], 2),
            num(e["broker_cpu_per_100k"], 2),
            num(e["lost"]),
            num(e["daemon_peak_rss_mib"]),
        )
        for e in summary
    ]
    notes = [f"{e['instances']} instances: {error}" for e in summary for error in e["errors"]]
    return found, notes


def scale_table(results: dict[str, Any]) -> str:
    found, notes = _scale_rows(results["summary"])
    lines = [scale_heading(results["meta"]), "", *aligned(SCALE_HEAD, found, 1)]
    return "\n".join([*lines, "", *notes] if notes else lines)


def scale_markdown(results: dict[str, Any]) -> str:
    found, notes = _scale_rows(results["summary"])
    lines = [f"*{scale_heading(results['meta'])}.*", "", *markdown_table(SCALE_HEAD, found, 1)]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
