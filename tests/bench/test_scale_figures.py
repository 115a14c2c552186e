"""The figures of `python -m bench --scale`, from made-up runs: no daemon, no broker (local:// has no broker
between processes, so there is nothing to scale there, and a real run is too long for the suite)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.plan import make_plan
from bench.report import markdown
from bench.scale_report import scale_figures, scale_markdown, summarise_scale

META = {"broker": "redis", "mode": "durable", "rate": 2000, "size": 256, "publish_seconds": 5.0, "reps": 2}


def _run(
    instances: int, *, sent: int = 10_000, received: int = 10_000, publisher_cpu: float = 1.0, receiver_cpu: float = 0.5
) -> dict[str, Any]:
    receivers = {
        f"receiver_{index}": {"cpu_s": receiver_cpu, "hwm_kib": 40_960, "rss_kib": 40_000}
        for index in range(1, instances)
    }
    return {
        "instances": instances,
        "pub": {"sent": sent, "elapsed": 5.0},
        "subs": [{"received": received} for _ in range(1, instances)],
        "processes": {
            "publisher": {"cpu_s": publisher_cpu, "hwm_kib": 51_200, "rss_kib": 50_000},
            **receivers,
            "broker_0": {"cpu_s": 0.2, "hwm_kib": 1, "rss_kib": 1},
        },
    }


def test_cost_per_event_of_the_publisher_the_receivers_and_all_daemons() -> None:
    run = _run(3)
    run["subs"][1]["received"] = 9_000
    run["processes"]["receiver_2"]["cpu_s"] = 0.9

    figures = scale_figures(run)

    assert figures["published_rate"] == 2000
    assert figures["delivered"] == 19_000 and figures["lost"] == 1_000
    assert figures["publisher_cpu_per_100k"] == pytest.approx(10.0)
    # Each receiver per event it received: 5.0 and 10.0.
    assert figures["receiver_cpu_per_100k"] == pytest.approx(7.5)
    assert figures["daemons_cpu_per_100k"] == pytest.approx(2.4 / 19_000 * 100_000)
    assert figures["broker_cpu_per_100k"] == pytest.approx(0.2 / 19_000 * 100_000)
    assert figures["daemon_peak_rss_mib"] == 50


def test_a_failed_run_has_no_figures_and_nothing_received_has_no_cost_per_event() -> None:
    assert scale_figures({"instances": 2, "error": "syncar a exited with 2"}) == {}
    figures = scale_figures(_run(2, received=0))
    assert figures["receiver_cpu_per_100k"] is None and figures["daemons_cpu_per_100k"] is None
    assert figures["lost"] == 10_000


def test_medians_per_number_of_instances_fewest_first_with_errors_kept() -> None:
    runs = [
        _run(4, publisher_cpu=1.0),
        _run(2),
        _run(4, publisher_cpu=3.0),
        {"instances": 2, "error": "syncar b not ready within 30.0s"},
    ]
    for run in runs:
        run["figures"] = scale_figures(run)

    summary = summarise_scale(runs)

    assert [e["instances"] for e in summary] == [2, 4]
    assert (
        summary[0]["runs"] == 2
        and summary[0]["ok"] == 1
        and summary[0]["errors"] == ["syncar b not ready within 30.0s"]
    )
    assert summary[1]["publisher_cpu_per_100k"] == pytest.approx(20.0)
    text = scale_markdown({"meta": META, "summary": summary})
    assert "durable mode" in text and "| 4 | 2,000 | 20.00 | 5.00 |" in text
    assert "- 2 instances: syncar b not ready" in text


def test_durable_mode_is_named_above_the_tables_and_leaves_out_what_it_cannot_run() -> None:
    assert "syncar daemons in durable mode" in markdown({}, "durable")
    plan = make_plan(quick=True, brokers=None, contestants=None, reps=None, seconds=None, mode="durable")
    assert plan.brokers == ("redis",) and "syncar-fs" not in plan.contestants
    assert plan.as_dict()["mode"] == "durable"
