"""The PNG: throughput bars (median, with the range over repetitions) and latency CDFs at each offered rate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench.plan import BROKER_LABELS, LABELS
from bench.report import QUANTILES

log = logging.getLogger(__name__)
PERCENTILE_TICKS = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999)
COLOURS = {
    "syncar": "#1f77b4",
    "syncar-traced": "#2ca02c",
    "syncar-base": "#9467bd",
    "syncar-fs": "#17becf",
    "ceiling": "#7f7f7f",
    "feathers-sync": "#d62728",
}


def _cdf_run(runs: list[dict[str, Any]], broker: str, contestant: str, case: str) -> list[float] | None:
    """The quantiles of the repetition whose p99 is the median one."""
    chosen = [
        r["figures"]
        for r in runs
        if r["broker"] == broker
        and r["contestant"] == contestant
        and r["case"] == case
        and r.get("figures", {}).get("latency_quantiles_ms")
    ]
    if not chosen:
        return None
    chosen.sort(key=lambda f: f["p99_ms"])
    quantiles: list[float] = chosen[len(chosen) // 2]["latency_quantiles_ms"]
    return quantiles


def _bars(axes: Any, summary: dict[str, Any], brokers: list[str], contestants: list[str], case: str) -> None:
    width = 0.8 / max(len(contestants), 1)
    for offset, contestant in enumerate(contestants):
        xs, heights, low, high = [], [], [], []
        for position, broker in enumerate(brokers):
            entry = summary[broker].get(contestant, {}).get(case, {})
            if entry.get("throughput"):
                xs.append(position + (offset - (len(contestants) - 1) / 2) * width)
                heights.append(entry["throughput"])
                low.append(entry["throughput"] - entry.get("throughput_min", entry["throughput"]))
                high.append(entry.get("throughput_max", entry["throughput"]) - entry["throughput"])
        axes.bar(xs, heights, width, yerr=[low, high], capsize=2, label=LABELS[contestant], color=COLOURS[contestant])
    axes.set_xticks(range(len(brokers)), [BROKER_LABELS.get(b, b) for b in brokers])
    axes.set_ylabel("events/s (median; bars: range)")
    axes.set_title(f"throughput, {case.split('-')[1]} B payload")
    axes.grid(axis="y", alpha=0.3)


def _cdf(axes: Any, runs: list[dict[str, Any]], broker: str, contestants: list[str], rate: int) -> None:
    for contestant in contestants:
        quantiles = _cdf_run(runs, broker, contestant, f"lat-{rate}")
        if quantiles:
            points = [(x, q) for x, q in zip(quantiles, QUANTILES, strict=True) if 0 < q < 1 and x > 0]
            axes.plot(
                [p[0] for p in points], [p[1] for p in points], label=LABELS[contestant], color=COLOURS[contestant]
            )
    axes.set_xscale("log")
    axes.set_yscale("logit")
    axes.set_ylim(0.01, 0.9995)
    axes.set_yticks(PERCENTILE_TICKS, [f"p{100 * q:g}" for q in PERCENTILE_TICKS])
    axes.minorticks_off()
    axes.set_xlabel("latency, ms (log)")
    axes.set_title(f"{BROKER_LABELS.get(broker, broker)}: latency CDF at {rate:,} events/s")
    axes.grid(alpha=0.3)


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files, or None (said once) if matplotlib is not installed."""
    try:
        import matplotlib  # noqa: PLC0415  (optional: the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        print("no plot: matplotlib is not installed")
        return None
    return plt


def save(figure: Any, path: Path, title: str) -> Path:
    """Give `figure` its `title`, write it to `path` and let it go."""
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    pyplot().close(figure)
    return path


def plot(results: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    summary, runs, meta = results["summary"], results["runs"], results["meta"]
    brokers = list(summary)
    contestants = [c for c in LABELS if any(c in summary[b] for b in brokers)]
    rates = sorted({r["rate"] for r in runs if r["rate"]})
    columns = max(len(brokers), 2)
    figure = plt.figure(figsize=(4.2 * columns, 3.6 * (1 + len(rates))), layout="constrained")
    grid = figure.add_gridspec(1 + len(rates), columns * 2)
    for index, case in enumerate(("tp-256", "tp-4096")):
        axes = figure.add_subplot(grid[0, index * columns : (index + 1) * columns])
        _bars(axes, summary, brokers, contestants, case)
        if index == 0:
            axes.legend(fontsize="small")
    for row, rate in enumerate(rates, start=1):
        for column, broker in enumerate(brokers):
            axes = figure.add_subplot(grid[row, column * 2 : (column + 1) * 2])
            _cdf(axes, runs, broker, contestants, rate)
            if row == 1 and column == 0:
                axes.legend(fontsize="x-small", loc="upper left")
    machine = meta["machine"]
    title = f"syncar benchmark: {meta['command']}, {meta.get('started', '')}"
    return save(figure, path, f"{title} ({machine['nproc']} cores, {machine['cpu']}, shared)")
