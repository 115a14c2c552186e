"""The PNGs of the benchmark's parts: what the daemons cost per event at the low rates against the raw pair
(`lowrate.png`), and what the fleet costs against feathers-sync (`fleet.png`). Medians from the parts' summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import fleet_report, lowrate_report
from bench.plan import BROKER_LABELS
from bench.plot import COLOURS, pyplot, save

#: Each contestant's colour in the fleet plot; the low-rate one shares the main plot's.
FLEET_COLOURS = {"syncar": COLOURS["syncar"], "feathers-sync": COLOURS["feathers-sync"]}
FLEET_RATES = (100, 1000, 0)  # 0: unpaced, as fast as the clients go


def _broker(name: str) -> str:
    return BROKER_LABELS.get(name, name)


def _stacked(axes: Any, x: float, width: float, parts: list[float | None], *, colour: str, label: str | None) -> None:
    """One bar of `parts` stacked, the first solid and the next ones lighter, labelled once."""
    bottom = 0.0
    for index, value in enumerate(parts):
        if value is None:
            continue
        alpha = 1.0 - 0.45 * index
        axes.bar(x, value, width, bottom=bottom, color=colour, alpha=alpha, label=None if index else label)
        bottom += value


def _rate_label(rate: int) -> str:
    return f"{rate:,}/s" if rate else "unpaced"


def plot_low_rate(results: dict[str, Any], path: Path) -> Path | None:
    """Per rate, the two daemons' CPU per event (publishing daemon solid, receiving one light) beside the raw
    publisher's and subscriber's, per broker; and p50 latency with p99 above it."""
    plt = pyplot()
    if plt is None:
        return None
    entries = results["summary"]["rates"]
    brokers = list(dict.fromkeys(e["broker"] for e in entries))
    rates = sorted({e["rate"] for e in entries})
    contestants = list(dict.fromkeys(e["contestant"] for e in entries))
    figure, panels = plt.subplots(1, len(rates) + 1, figsize=(4.6 * (len(rates) + 1), 4.0), layout="constrained")
    width = 0.8 / max(len(contestants), 1)
    found = {(e["broker"], e["rate"], e["contestant"]): e for e in entries}
    for axes, rate in zip(panels, rates, strict=False):
        for offset, contestant in enumerate(contestants):
            for position, broker in enumerate(brokers):
                entry = found.get((broker, rate, contestant))
                if entry is None:
                    continue
                x = position + (offset - (len(contestants) - 1) / 2) * width
                label = lowrate_report.LABELS[contestant] if position == 0 else None
                _stacked(axes, x, width, [entry["pub_us"], entry["sub_us"]], colour=COLOURS[contestant], label=label)
                if entry.get("ratio_to_raw"):
                    axes.annotate(
                        f"{entry['ratio_to_raw']:.2f}x",
                        (x, entry["both_us"] or 0),
                        ha="center",
                        va="bottom",
                        fontsize="x-small",
                    )
        axes.set_xticks(range(len(brokers)), [_broker(b) for b in brokers])
        axes.set_ylabel("CPU µs per event (publisher + receiver)")
        axes.set_title(f"{rate:,} events/s of 256 B: CPU per event")
        axes.grid(axis="y", alpha=0.3)
    panels[0].legend(fontsize="x-small")
    axes = panels[-1]
    for offset, contestant in enumerate(contestants):
        for position, (broker, rate) in enumerate((b, r) for b in brokers for r in rates):
            entry = found.get((broker, rate, contestant))
            if entry is None or entry["p50_ms"] is None:
                continue
            x = position + (offset - (len(contestants) - 1) / 2) * width
            axes.bar(x, entry["p50_ms"], width, color=COLOURS[contestant])
            axes.plot([x], [entry["p99_ms"]], marker="_", markersize=9, color=COLOURS[contestant])
    pairs = [f"{_broker(b)}\n{r:,}/s" for b in brokers for r in rates]
    axes.set_xticks(range(len(pairs)), pairs, fontsize="x-small")
    axes.set_yscale("log")
    axes.set_ylabel("ms (log): bar p50, mark p99")
    axes.set_title("one-way latency")
    axes.grid(axis="y", alpha=0.3)
    meta = results["meta"]
    return save(figure, path, f"syncar at low rates: {meta['command']}, {meta.get('started', '')}")


def plot_fleet(results: dict[str, Any], path: Path) -> Path | None:
    """Per broker and offered rate, the fleet's CPU per event (apps solid, daemons light) for syncar and for
    feathers-sync; and p50 latency with p99 above it."""
    plt = pyplot()
    if plt is None:
        return None
    entries = results["summary"]
    brokers = list(dict.fromkeys(e["broker"] for e in entries))
    found = {(e["broker"], e["rate"], e["contestant"]): e for e in entries}
    figure, rows = plt.subplots(2, len(brokers), figsize=(4.6 * len(brokers), 7.6), layout="constrained", squeeze=False)
    width = 0.38
    for column, broker in enumerate(brokers):
        cpu, lat = rows[0][column], rows[1][column]
        for offset, contestant in enumerate(FLEET_COLOURS):
            for position, rate in enumerate(FLEET_RATES):
                entry = found.get((broker, rate, contestant))
                if entry is None:
                    continue
                x = position + (offset - 0.5) * width
                label = fleet_report.LABELS[contestant] if position == 0 else None
                colour = FLEET_COLOURS[contestant]
                _stacked(cpu, x, width, [entry["app_us"], entry["daemon_us"]], colour=colour, label=label)
                if entry["p50_ms"] is not None:
                    lat.bar(x, entry["p50_ms"], width, color=colour, label=label)
                    lat.plot([x], [entry["p99_ms"]], marker="_", markersize=9, color=colour)
        ticks = [_rate_label(r) for r in FLEET_RATES]
        cpu.set_xticks(range(len(ticks)), ticks)
        cpu.set_ylabel("CPU µs per event: apps, then daemons")
        cpu.set_title(f"{_broker(broker)}: the fleet's CPU per event")
        cpu.grid(axis="y", alpha=0.3)
        lat.set_xticks(range(len(ticks)), ticks)
        lat.set_yscale("log")
        lat.set_ylabel("ms (log): bar p50, mark p99")
        lat.set_title(f"{_broker(broker)}: create to created")
        lat.grid(axis="y", alpha=0.3)
    rows[0][0].legend(fontsize="x-small")
    meta = results["meta"]
    return save(figure, path, f"three Feathers instances: {meta['command']}, {meta.get('started', '')}")
