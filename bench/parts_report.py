"""What the reports of the benchmark's parts of their own share (bench.lowrate_report, bench.fleet_report):
repetitions grouped and their medians, a contestant against another in the same repetition, and the tables, on the
terminal and in Markdown."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bench.report import aligned, markdown_table, medians

#: A table (its head, its rows, how many columns are aligned left) or a line of text.
Block = tuple[tuple[str, ...], list[tuple[str, ...]], int] | str
TARGETS_HEAD = ("target", "measured", "met?")


def groups(runs: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """`runs` by the values of `keys`, in the order first met."""
    found: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        found.setdefault(tuple(run[k] for k in keys), []).append(run)
    return found


Group = tuple[dict[str, Any], list[dict[str, Any]]]


def per_rate(runs: list[dict[str, Any]], names: tuple[str, ...]) -> Iterator[Group]:
    """Per broker, rate and contestant: an entry with the medians of figures `names` over its repetitions and
    whether most of them were saturated; and those repetitions."""
    for (broker, rate, contestant), members in groups(runs, "broker", "rate", "contestant").items():
        figures = [m["figures"] for m in members if m.get("figures")]
        entry = {"broker": broker, "rate": rate, "contestant": contestant, **medians(members, names)}
        entry["saturated"] = sum(bool(f.get("saturated")) for f in figures) > len(figures) / 2
        yield entry, members


def paired(
    runs: list[dict[str, Any]], members: list[dict[str, Any]], reference: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The figures of each of `members` that has some, with those of contestant `reference` in the same broker,
    rate and repetition (empty if it has none)."""
    theirs = {(r["broker"], r["rate"], r["rep"]): r.get("figures", {}) for r in runs if r["contestant"] == reference}
    return [(m["figures"], theirs.get((m["broker"], m["rate"], m["rep"]), {})) for m in members if m.get("figures")]


def ratio(mine: float | None, theirs: float | None) -> float | None:
    return mine / theirs if mine is not None and theirs else None


def latency(entry: dict[str, Any]) -> str:
    """p50/p99 in ms, marked if most repetitions were saturated."""
    if entry["p50_ms"] is None:
        return "-"
    return f"{entry['p50_ms']:.2f}/{entry['p99_ms']:.2f}" + (" (sat.)" if entry["saturated"] else "")


def conditions(meta: dict[str, Any]) -> str:
    """The end of a heading: the machine's load around the part, and the commit of the daemons measured."""
    load = meta.get("loadavg_start", (0, 0, 0))[0], meta.get("loadavg_end", (0, 0, 0))[0]
    return (
        f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end; "
        f"daemons at {meta.get('syncar_commit', '?')}"
    )


def broker_notes(results: dict[str, Any]) -> list[str]:
    return [f"{broker}: not measured: {error.splitlines()[0]}" for broker, error in results["broker_errors"].items()]


def text(heading: str, blocks: list[Block], notes: list[str]) -> str:
    """The terminal tables: the heading, each block, then the notes, a blank line between."""
    lines = [heading]
    for block in blocks:
        lines += ["", *([block] if isinstance(block, str) else aligned(*block))]
    return "\n".join([*lines, "", *notes] if notes else lines)


def markdown(heading: str, blocks: list[Block], notes: list[str]) -> str:
    """The same in Markdown: the heading in italics, each line of text a sentence, the notes a list."""
    lines = [f"*{heading}.*"]
    for block in blocks:
        lines += ["", *([block + "."] if isinstance(block, str) else markdown_table(*block))]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
