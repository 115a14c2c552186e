"""syncar's metrics are plain numbers that it writes out itself at scrape time: what /metrics shows must be what
prometheus-client's own Counter, Gauge and Histogram show for the same updates, and the daemon must not import it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

from sidecar import __version__
from sidecar.http import METRICS_CONTENT_TYPE
from sidecar.metrics import LATENCY_BUCKETS, Counter, Gauge, Histogram, Metrics


@pytest.fixture
def without_created() -> Iterator[None]:
    """prometheus-client's metrics as syncar exported them before: no *_created series (a process-wide switch)."""
    prometheus_client.disable_created_metrics()
    yield
    prometheus_client.enable_created_metrics()


@pytest.mark.usefixtures("without_created")
def test_metrics_render_as_prometheus_clients_own() -> None:
    theirs = CollectorRegistry()
    counter = prometheus_client.Counter("c", "a counter", registry=theirs)
    labelled = prometheus_client.Counter("l", "by reason", ["reason"], registry=theirs)
    prometheus_client.Counter("u", "never counted", ["reason"], registry=theirs)
    gauge = prometheus_client.Gauge("g", "a gauge", registry=theirs)
    read = prometheus_client.Gauge("r", "read when scraped", registry=theirs)
    nodes = prometheus_client.Gauge("n", "by node", ["node"], registry=theirs)
    seconds = prometheus_client.Histogram("h", "seconds", buckets=LATENCY_BUCKETS, registry=theirs)
    ours = [
        Counter("c", "a counter"),
        Counter("l", "by reason", ("reason",)),
        Counter("u", "never counted", ("reason",)),
        Gauge("g", "a gauge"),
        Gauge("r", "read when scraped"),
        Gauge("n", "by node", ("node",)),
        Histogram("h", "seconds", LATENCY_BUCKETS),
    ]
    for c in (counter, ours[0]):
        c.inc()
        c.inc(2.5)
    for c in (labelled, ours[1]):
        c.labels("echo").inc(3)
        c.labels(reason="duplicate").inc()
        c.labels("echo").inc()
    for g in (gauge, ours[3]):
        g.set(7)
    for g in (read, ours[4]):
        g.set_function(lambda: 12)
    for g in (nodes, ours[5]):
        g.labels(node="a:1").set(1)
        g.labels(node="b:2").set(0)
        g.remove("a:1")
    for h in (seconds, ours[6]):
        for value in (0.0, 0.0001, 0.00010001, 0.003, 10.0, 11.0, 0.5):  # on a bound, just above, beyond the last
            h.observe(value)

    lines: list[str] = []
    for metric in ours:
        metric.render(lines)
    assert "".join(lines) == generate_latest(theirs).decode()


@pytest.mark.parametrize("value", [0, 1, 2.5, 1e-9, 123456.0, 1234567.0, 2e7, 1.5e300, float("inf"), float("nan")])
def test_values_are_written_as_prometheus_client_writes_them(value: float) -> None:
    theirs = CollectorRegistry()
    prometheus_client.Gauge("g", "a gauge", registry=theirs).set(value)
    ours = Gauge("g", "a gauge")
    ours.set(value)
    lines: list[str] = []
    ours.render(lines)
    assert "".join(lines) == generate_latest(theirs).decode()


def test_the_build_and_the_peer_table_are_written_as_prometheus_client_writes_them() -> None:
    rows: list[tuple[str, float, int | None]] = [("a", 1.5, 3), ('b "2"\\\n', 20.0, None)]

    class Theirs:
        def collect(self) -> Iterator[Metric]:
            build = {"version": __version__, "backend": "redis", "codec": "syncar"}
            yield InfoMetricFamily("syncar_build", "syncar version and configuration", value=build)
            yield GaugeMetricFamily("syncar_peers", "Other daemons heard on the key's announcements", value=2)
            age = GaugeMetricFamily(
                "syncar_peer_heard_seconds", "Seconds since each peer's last announcement", labels=["peer"]
            )
            lag = GaugeMetricFamily(
                "syncar_peer_lag_events",
                "Events of each peer's run, by its last announcement, not received here (syncar codec)",
                labels=["peer"],
            )
            for peer, seconds, behind in rows:
                age.add_metric([peer], seconds)
                if behind is not None:
                    lag.add_metric([peer], behind)
            yield age
            yield lag

    theirs = CollectorRegistry()
    theirs.register(Theirs())
    mine = Metrics("redis", "syncar")
    mine.watch_peers(lambda: rows)
    rendered = mine.render().decode()
    assert rendered.endswith(generate_latest(theirs).decode())


def test_a_scrape_imports_nothing_of_prometheus_client() -> None:
    """It cost a scraped daemon 2.1 MiB of resident memory and ~20 ms of CPU at its first scrape."""
    script = (
        "import sys; from sidecar.metrics import Metrics; m = Metrics('local', 'syncar'); "
        "m.watch_peers(lambda: [('a', 1.0, 2)]); m.render(); "
        "print(sorted(name for name in sys.modules if name.startswith('prometheus_client')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_the_text_is_labelled_as_the_format_prometheus_client_writes_it_in() -> None:
    """`generate_latest` writes the 0.0.4 text format; prometheus-client's own server labels it so for a scraper."""
    assert METRICS_CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4
