"""The benchmark still runs: `python -m bench --quick --brokers local` produces every figure.

It checks that figures exist and are sane, never how fast anything is: speed is the benchmark's business, and
this machine is shared.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.bench import run_bench
from tests.utils import REPO

#: The quick local run takes ~15 s on a quiet machine and took over 50 s at a load of 16.
RUN_TIMEOUT = 110

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 10)


def test_quick_local_run_produces_every_figure(tmp_path: Path) -> None:
    done = run_bench("bench", "--quick", "--brokers", "local", "--no-plot", "--out", str(tmp_path), timeout=RUN_TIMEOUT)
    assert "local://" in done.stdout and "syncar, syncar codec" in done.stdout, done.stdout

    results = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert results["meta"]["machine"]["nproc"] >= 1
    runs = results["runs"]
    # Both codecs x (two throughput cases + two latency cases), one repetition each.
    assert {(r["contestant"], r["case"]) for r in runs} == {
        (contestant, case)
        for contestant in ("syncar", "syncar-fs")
        for case in ("tp-256", "tp-4096", "lat-1000", "lat-10000")
    }
    for run in runs:
        assert not run.get("error"), run["error"]
        figures = run["figures"]
        assert figures["received"] > 0 and figures["received"] <= figures["sent"], figures
        assert figures["daemon_cpu_per_100k"] > 0, figures
        assert figures["daemon_peak_rss_mib"] > 1, figures
        if run["rate"]:
            assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["p999_ms"], figures
            assert len(figures["latency_quantiles_ms"]) > 100
        else:
            assert figures["throughput"] > 0, figures

    summary = results["summary"]["local"]
    assert summary["syncar"]["tp-256"]["throughput"] > 0
    assert summary["syncar-fs"]["lat-1000"]["p99_ms"] > 0


def test_traced_publishes_and_a_base_checkout_run_alternated(tmp_path: Path) -> None:
    """`--contestants syncar-traced` publishes every event with W3C trace context, which the daemon takes (no error
    frame comes back); `--base-root` adds the daemons of another checkout (here this one) as `syncar-base`."""
    done = run_bench(
        *("bench", "--quick", "--brokers", "local", "--contestants", "syncar-traced"),
        *("--base-root", str(REPO), "--seconds", "0.3", "--no-plot", "--out", str(tmp_path)),
        timeout=RUN_TIMEOUT,
    )
    assert "syncar codec, trace context" in done.stdout and "syncar codec, --base-root" in done.stdout, done.stdout
    results = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert results["meta"]["base_root"] == str(REPO)
    runs = results["runs"]
    assert {r["contestant"] for r in runs} == {"syncar-base", "syncar-traced"}
    for run in runs:
        assert not run.get("error"), run["error"]
        assert run["pub"]["errors"] == 0, run["pub"]  # an invalid_trace_context would be an error frame
        assert run["figures"]["received"] > 0, run["figures"]


def test_the_hot_path_measurement_runs_before_and_after() -> None:
    done = run_bench("bench.hotpath", "--rounds", "1", "--base-root", str(REPO), timeout=RUN_TIMEOUT)
    lines = [line for line in done.stdout.splitlines() if "publish" in line and "receive" in line]
    assert [line.split("publish")[0].strip() for line in lines] == [
        "before (--base-root)",
        "after",
        "after, every event traced",
    ]
    for line in lines:
        publish, receive = (float(part.split()[0]) for part in line.split("publish")[1].split("receive"))
        assert publish > 0 and receive > 0, line


@pytest.mark.nats
@pytest.mark.cluster
def test_cluster_run_measures_syncar_on_the_cluster_after_its_single_node(tmp_path: Path) -> None:
    """`--cluster`: each broker again as a local cluster (NATS: three servers, the quickest to start), right after
    its single node, with the syncar contestants only."""
    done = run_bench(
        *("bench", "--quick", "--brokers", "nats", "--cluster", "--contestants", "syncar,ceiling"),
        *("--seconds", "0.3", "--no-plot", "--out", str(tmp_path)),
        timeout=RUN_TIMEOUT,
    )
    assert "NATS cluster (3 nodes)" in done.stdout, done.stdout
    results = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert results["meta"]["plan"]["brokers"] == ["nats", "nats-cluster"]
    runs = {(r["broker"], r["contestant"]) for r in results["runs"]}
    assert runs == {("nats", "syncar"), ("nats", "ceiling"), ("nats-cluster", "syncar")}
    for run in results["runs"]:
        assert not run.get("error"), run["error"]
        assert run["figures"]["received"] > 0, run["figures"]
    assert results["sections"]["nats-cluster"]["uri"].count(",") == 2  # three servers


@pytest.mark.parametrize("part", ["lowrate", "fleet"])
def test_report_redraws_a_parts_run_from_its_json(tmp_path: Path, part: str) -> None:
    """`--report` of the JSON that docs/benchmarks.md shows writes that part's tables and plot again."""
    done = run_bench(
        "bench", "--report", str(REPO / "docs" / "benchmarks" / f"{part}.json"), "--out", str(tmp_path), timeout=60
    )
    assert (tmp_path / f"{part}.md").read_text() == (REPO / "docs" / "benchmarks" / f"{part}.md").read_text()
    assert (tmp_path / f"{part}.png").read_bytes().startswith(b"\x89PNG")
    assert "the highest rate" in done.stdout if part == "fleet" else "start under 300 ms" in done.stdout
