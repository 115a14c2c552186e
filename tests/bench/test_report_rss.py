"""The main run's peak RSS of each of the two daemons, from made-up runs: a full-speed run on a broker is too long
for the suite, and local:// has one daemon."""

from __future__ import annotations

from typing import Any

from bench.report import derive, rss_lines, summarise


def _run(case: str, size: int, rep: int, publisher_kib: int, receiver_kib: int) -> dict[str, Any]:
    samples = [[t / 10, 1_000 * t] for t in range(11)]  # 10,000 events in 1 s
    usage = {"cpu_s": 1.0, "maxrss_kib": 20_480}
    return {
        "broker": "redis",
        "contestant": "syncar",
        "case": case,
        "size": size,
        "rate": 0,
        "rep": rep,
        "pub": {"sent": 10_000, "elapsed": 1.0},
        "sub": {"received": 10_000, "samples": samples},
        "pub_usage": usage,
        "sub_usage": usage,
        "processes": {
            "daemon_a": {"cpu_s": 0.5, "hwm_kib": publisher_kib},
            "daemon_b": {"cpu_s": 0.5, "hwm_kib": receiver_kib},
            "broker_0": {"cpu_s": 0.2, "hwm_kib": 1},
        },
    }


def test_the_publishing_and_the_receiving_daemons_peaks_apart_as_medians() -> None:
    runs = [
        _run("tp-256", 256, rep, publisher_kib=kib, receiver_kib=kib + 2048)
        for rep, kib in enumerate((60 * 1024, 62 * 1024, 61 * 1024))
    ] + [_run("tp-4096", 4096, 0, publisher_kib=58 * 1024, receiver_kib=57 * 1024)]
    for run in runs:
        run["figures"] = derive(run)
    summary = summarise(runs)
    assert summary["redis"]["syncar"]["tp-256"]["daemon_peak_rss_mib"] == 63.0  # the larger of the two
    assert rss_lines(summary) == [
        "Redis syncar, syncar codec: peak RSS MiB of the publishing / receiving daemon, 256 B 61.0 / 63.0, "
        "4 KiB 58.0 / 57.0"
    ]
