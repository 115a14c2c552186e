"""`python -m bench --low-rate` still runs: on local:// and Redis, with short runs, it produces every figure.

It checks that the figures exist and are sane, never how small they are: the machine is shared.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.bench import run_bench
from tests.brokers import require_binary
from tests.utils import REPO

#: Six runs at fixed rates, two idle runs, two starts and an import, half a second each: ~20 s on a loaded machine.
RUN_TIMEOUT = 80


def low_rate(out: Path, *args: str, reps: int = 1) -> dict[str, Any]:
    """`python -m bench --low-rate` with `reps` repetitions of half a second per case; its JSON figures. Python
    writes no bytecode of its own here (as in CI and containers): what is compiled, the benchmark compiled."""
    command = ["bench", "--low-rate", *args, "--reps", str(reps), "--seconds", "0.5", "--out", str(out)]
    run_bench(*command, timeout=RUN_TIMEOUT, env={"PYTHONDONTWRITEBYTECODE": "1"})
    results: dict[str, Any] = orjson.loads((out / "lowrate.json").read_bytes())
    return results


@pytest.mark.redis
@pytest.mark.timeout(RUN_TIMEOUT + 10)
def test_low_rate_run_on_local_and_redis_produces_every_figure(tmp_path: Path) -> None:
    require_binary("redis-server")
    results = low_rate(tmp_path, "--brokers", "local,redis")
    assert (tmp_path / "lowrate.md").read_text().count("\n|") > 10
    assert (tmp_path / "lowrate.png").read_bytes().startswith(b"\x89PNG"), "no plot of the low rates"

    runs = {(r["broker"], r["contestant"], r["rate"]): r for r in results["rates"]}
    assert set(runs) == {
        ("local", "syncar", 100),
        ("local", "syncar", 1000),
        ("redis", "syncar", 100),
        ("redis", "syncar", 1000),
        ("redis", "ceiling", 100),
        ("redis", "ceiling", 1000),
    }
    for run in runs.values():
        figures = run["figures"]
        assert not run.get("error") and 0 < figures["received"] <= figures["sent"], run
        # Each side handled every event and cost something for it; local:// has one daemon for both sides.
        sides = ("both",) if run["broker"] == "local" else ("pub", "sub", "both")
        assert all(figures[f"{side}_us"] > 0 and figures[f"{side}_wakeups"] >= 0 for side in sides), figures
        assert 0 < figures["p50_ms"] <= figures["p99_ms"], figures

    summary = results["summary"]
    ratios = [e["ratio_to_raw"] for e in summary["rates"] if e["contestant"] == "syncar" and e["broker"] == "redis"]
    assert len(ratios) == 2 and all(r > 0 for r in ratios), summary["rates"]
    for part in ("idle", "start"):
        assert [e["broker"] for e in summary[part]] == ["local", "redis"], summary[part]
    for idle in summary["idle"]:
        assert idle["cpu_ms_per_s"] >= 0 and idle["rss_mib"] > 1 and idle["scraped_rss_mib"] > 1, idle
    for start in summary["start"]:
        assert start["start_ms"] > 0 and start["start_cpu_ms"] > 0, start
    assert summary["import"]["importtime_ms"] > 0 and summary["import"]["import_cpu_ms"] > 0, summary["import"]
    assert all(r["daemon_exits"] == {"start-1": 0} for r in results["start"]), results["start"]


def test_low_rate_with_a_base_checkout_runs_its_daemons_alternated_with_ours(tmp_path: Path) -> None:
    base = tmp_path / "base"
    for package in ("sidecar", "backends"):  # a copy without bytecode, as `git archive` makes one
        shutil.copytree(REPO / package, base / package, ignore=shutil.ignore_patterns("__pycache__"))
    results = low_rate(tmp_path, "--brokers", "local", "--base-root", str(base), reps=2)
    # Alternated, and neither checkout always first: the second repetition runs them in reverse.
    assert [(r["rep"], r["contestant"], r["rate"]) for r in results["rates"]] == [
        (0, "syncar-base", 100),
        (0, "syncar", 100),
        (0, "syncar-base", 1000),
        (0, "syncar", 1000),
        (1, "syncar", 100),
        (1, "syncar-base", 100),
        (1, "syncar", 1000),
        (1, "syncar-base", 1000),
    ]
    assert all(r["figures"]["both_us"] > 0 for r in results["rates"]), results["rates"]
    # Idle, start and the client's import of both checkouts too, alternated likewise, each in a row of its own.
    for part in ("idle", "start", "imports"):
        order = [(r["rep"], r["contestant"]) for r in results[part]]
        assert order == [(0, "syncar-base"), (0, "syncar"), (1, "syncar"), (1, "syncar-base")], results[part]
    summary = results["summary"]
    assert [(e["contestant"], e["rss_mib"] > 1) for e in summary["idle"]] == [("syncar-base", True), ("syncar", True)]
    assert [(e["contestant"], e["start_cpu_ms"] > 0) for e in summary["start"]] == [
        ("syncar-base", True),
        ("syncar", True),
    ]
    assert summary["import_base"]["import_cpu_ms"] > 0 and summary["import"]["import_cpu_ms"] > 0, summary
    assert results["meta"]["base_root"] == str(base)
    assert "--base-root" in (tmp_path / "lowrate.md").read_text()
    # Started as installed: the daemons read byte-compiled modules instead of compiling them at every start.
    assert list((base / "sidecar" / "__pycache__").glob("daemon.*.pyc")), sorted(base.rglob("*"))[:20]
    assert list((base / "backends" / "__pycache__").glob("local.*.pyc"))
