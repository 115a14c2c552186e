"""syncar's metrics are plain numbers rendered by prometheus-client at scrape time: what /metrics shows must be
what prometheus-client's own Counter, Gauge and Histogram show for the same updates."""

from __future__ import annotations

from collections.abc import Iterator

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from sidecar import __version__
from sidecar.metrics import LATENCY_BUCKETS, Counter, Gauge, Histogram, Metrics


@pytest.fixture
def without_created() -> Iterator[None]:
    """prometheus-client's metrics as syncar exported them before: no *_created series (a process-wide switch)."""
    # prometheus-client 0.26 leaves these two functions unannotated: the ignores stand for its missing types.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    yield
    prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]


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
    our_counter = Counter("c", "a counter")
    our_labelled = Counter("l", "by reason", ("reason",))
    our_gauge = Gauge("g", "a gauge")
    our_read = Gauge("r", "read when scraped")
    our_nodes = Gauge("n", "by node", ("node",))
    our_seconds = Histogram("h", "seconds", LATENCY_BUCKETS)
    ours: list[Counter | Gauge | Histogram] = [
        our_counter,
        our_labelled,
        Counter("u", "never counted", ("reason",)),
        our_gauge,
        our_read,
        our_nodes,
        our_seconds,
    ]
    for c in (counter, our_counter):
        c.inc()
        c.inc(2.5)
    for c in (labelled, our_labelled):
        c.labels("echo").inc(3)
        c.labels(reason="duplicate").inc()
        c.labels("echo").inc()
    for g in (gauge, our_gauge):
        g.set(7)
    for g in (read, our_read):
        g.set_function(lambda: 12)
    for g in (nodes, our_nodes):
        g.labels(node="a:1").set(1)
        g.labels(node="b:2").set(0)
        g.remove("a:1")
    for h in (seconds, our_seconds):
        for value in (0.0, 0.0001, 0.00010001, 0.003, 10.0, 11.0, 0.5):  # on a bound, just above, beyond the last
            h.observe(value)

    class Ours:
        def collect(self) -> list[Metric]:
            return [metric.collect() for metric in ours]

    rendered = CollectorRegistry()
    rendered.register(Ours())
    assert generate_latest(rendered).decode() == generate_latest(theirs).decode()


def test_the_registry_is_made_when_first_asked_for_and_holds_every_metric() -> None:
    mine = Metrics("redis", "syncar")
    mine.published.inc()
    assert mine.registry.get_sample_value("syncar_events_published_total") == 1
    build = {"backend": "redis", "codec": "syncar", "version": __version__}
    assert mine.registry.get_sample_value("syncar_build_info", build) == 1
