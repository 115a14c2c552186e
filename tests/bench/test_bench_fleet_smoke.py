"""`python -m bench --fleet` still runs: on Redis, with short runs, it produces every figure for both contestants.

It checks that the figures exist and are sane, never how small they are: the machine is shared.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from bench.fleet import CPU_PROF, loss_figures, node_problem
from bench.processes import NODE_DIR
from tests.bench import run_bench
from tests.brokers import require_binary
from tests.utils import REPO, unavailable

#: Six runs (two contestants at 100, 1,000 events/s and unpaced), each with 3 apps (and 3 daemons), half a second of
#: warm-up and half a second measured: ~40 s on a loaded machine.
RUN_TIMEOUT = 150


@pytest.mark.redis
@pytest.mark.timeout(RUN_TIMEOUT + 10)
def test_fleet_run_on_redis_produces_every_figure(tmp_path: Path) -> None:
    require_binary("redis-server")
    if problem := node_problem():
        unavailable(problem)
    command = ["bench", "--fleet", "--brokers", "redis", "--reps", "1", "--seconds", "0.5", "--out", str(tmp_path)]
    run_bench(*command, timeout=RUN_TIMEOUT)
    results = orjson.loads((tmp_path / "fleet.json").read_bytes())
    assert (tmp_path / "fleet.md").read_text().count("\n|") >= 8
    assert (tmp_path / "fleet.png").read_bytes().startswith(b"\x89PNG"), "no plot of the fleet"

    runs = {(r["contestant"], r["rate"]): r for r in results["runs"]}
    assert set(runs) == {(c, rate) for c in ("syncar", "feathers-sync") for rate in (100, 1000, 0)}
    for (contestant, _), run in runs.items():
        assert not run.get("error"), run["error"]
        figures = run["figures"]
        # Every event created reached the two other clients; CPU is counted for each kind of process that ran.
        assert figures["sent"] > 0 and figures["lost"] == 0 and figures["create_errors"] == 0, figures
        # The apps' own account: they missed nothing, and were told of nothing (bench.fleet.loss_figures).
        assert (figures["missed_by_apps"], figures["told"], figures["untold"]) == (0, 0, 0), figures
        assert len(run["told"]) == 3, run
        assert figures["app_us"] > 0 and figures["broker_us"] > 0 and figures["clients_us"] > 0, figures
        if contestant == "syncar":
            assert figures["daemon_us"] > 0 and set(run["daemon_exits"].values()) == {0}, run
            assert figures["all_us"] == pytest.approx(figures["app_us"] + figures["daemon_us"])
        else:
            assert figures["daemon_us"] is None and figures["all_us"] == figures["app_us"], figures
        assert figures["peak_rss_mib"] > 3 * 10, figures  # three Node apps at least
        assert 0 < figures["p50_ms"] <= figures["p99_ms"], figures
        assert figures["achieved"] > 0, figures
        # Where the latency goes, from the apps' reports: create to its app, then to the other apps' emits.
        assert figures["to_app_ms"] > 0 and 0 < figures["app_to_app_ms"] <= figures["app_to_app_p99_ms"], figures
        # With syncar, that hop split at the publishing daemon's stamp (by the wall clock: only their presence).
        split = [
            figures[name] for name in ("to_daemon_ms", "to_daemon_p99_ms", "daemon_to_app_ms", "daemon_to_app_p99_ms")
        ]
        assert all(f is not None for f in split) if contestant == "syncar" else split == [None] * 4, figures
        # The apps' collections during the run, as perf_hooks told them.
        assert figures["apps_gc_pauses"] >= figures["apps_gc_full"] >= 0 and figures["apps_gc_ms"] >= 0, figures
    assert "its app to each other app's emit" in (tmp_path / "fleet.md").read_text()

    syncar = [e for e in results["summary"] if e["contestant"] == "syncar"]
    assert len(syncar) == 3 and all(e["all_us_ratio"] > 0 and e["p99_ms_ratio"] > 0 for e in syncar), syncar


@pytest.mark.redis
@pytest.mark.timeout(RUN_TIMEOUT + 10)
def test_fleet_base_root_runs_that_checkouts_plugin_and_daemons_at_one_rate(tmp_path: Path) -> None:
    """`--base-root` adds `syncar-base` (another checkout's Node plugin and daemons; here this one), alternated with
    the others, and `--rate` keeps one rate: three runs. With CPU_PROF set, every app leaves its CPU profile."""
    require_binary("redis-server")
    if problem := node_problem():
        unavailable(problem)
    command = ["bench", "--fleet", "--brokers", "redis", "--reps", "1", "--seconds", "0.5", "--rate", "1000"]
    profiles = tmp_path / "profiles"
    done = run_bench(
        *command,
        *("--base-root", str(REPO), "--no-plot", "--out", str(tmp_path)),
        timeout=RUN_TIMEOUT,
        env={CPU_PROF: str(profiles)},
    )
    assert "the same, --base-root" in done.stdout, done.stdout
    results = orjson.loads((tmp_path / "fleet.json").read_bytes())
    assert results["meta"]["base_root"] == str(REPO) and results["meta"]["rates"] == [1000]
    runs = {r["contestant"]: r for r in results["runs"]}
    assert [r["contestant"] for r in results["runs"]] == ["syncar-base", "syncar", "feathers-sync"]
    for name in ("syncar-base", "syncar"):
        figures = runs[name]["figures"]
        assert not runs[name].get("error") and figures["lost"] == 0 and figures["daemon_us"] > 0, runs[name]
    base = next(e for e in results["summary"] if e["contestant"] == "syncar-base")
    assert base["all_us_ratio"] > 0, base

    written = sorted(profiles.glob("*.cpuprofile"))
    assert len(written) == 3 * 3, written  # three apps in each of the three runs
    summed = [
        subprocess.run(
            ["node", str(NODE_DIR / "cpuprofile.js"), str(path), "--match", "clients/node/lib"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for path in written
    ]
    assert all("s sampled; self time:" in out for out in summed), summed
    # The plugin's functions (--match on their files) show in the syncar runs' apps' profiles.
    assert any("connection.js" in out.partition("total time of functions")[2] for out in summed), summed


def test_loss_figures_tell_what_each_app_missed_and_was_told() -> None:
    """Messages 0..8, created through app n % 3. App 0 missed 4 and 7, told of one by a gap frame and of app 2's
    refused publish; app 1 missed 2, the publish app 2 refused to relay; app 2 missed 1 and 4, told nothing."""
    emitted = [[1, 2, 5, 8], [0, 3, 5, 6, 8], [0, 3, 6, 7]]
    hops = [{"before": [], "emitted": [value for n in numbers for value in (n, 1)]} for numbers in emitted]
    told = [
        {"gaps": 1, "missed": 1, "resumes": 0, "resume_missed": 0, "refused": 0},
        {"gaps": 0, "missed": 0, "resumes": 0, "resume_missed": 0, "refused": 0},
        {"gaps": 0, "missed": 0, "resumes": 0, "resume_missed": 0, "refused": 1},
    ]
    assert loss_figures(9, hops, told) == {"missed_by_apps": 5, "told": 3, "untold": 2}
