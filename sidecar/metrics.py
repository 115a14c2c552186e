"""Every Prometheus metric syncar exports, defined once, per daemon.

Label sets are small and fixed: no per-event, per-path or per-client labels.
Gauges read their value at scrape time, so they cost nothing on the hot path.

The metrics are plain numbers, and prometheus-client renders them only when they are read (`Metrics.registry`, at
the first scrape of `/metrics`): importing it costs ~20 ms of CPU and 2 MiB of resident memory (its package imports
its HTTP servers, `urllib.request`, `wsgiref`, `email`), which a daemon's start and an unscraped daemon need not pay
(docs/benchmarks/history.md, "Start and idle memory"). A counter is a float added to, without prometheus-client's lock:
every metric is touched from
the event loop's thread only. The exposition is prometheus-client's, without `*_created` series (when a metric was
made), which no query here needs: rate() finds counter resets without them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Self

from sidecar import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

#: Latency buckets from 100 µs to 10 s: local relays are sub-millisecond, a broker outage is seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class DropReason:
    OUTBOX_FULL = "outbox_full"
    RATE_LIMITED = "rate_limited"  # a client over --client-rate
    TOO_LARGE = "too_large"  # over the broker's message size
    MALFORMED = "malformed"  # from the broker, not decodable
    FOREIGN = "foreign"  # from the broker, another format or version
    ECHO = "echo"  # our own, come back from the broker
    DUPLICATE = "duplicate"  # an event id seen already (redelivery, or a publish resent after a lost ack)
    UNCONFIRMED = "unconfirmed"  # the broker may have it but did not confirm; not sent again (feathers-sync codec)


#: Each peer in the table: its instance id, seconds since it was last heard, its sequence lag (None: not known).
PeerRows = Callable[[], list[tuple[str, float, int | None]]]


class _Labelled:
    """What a counter and a gauge share: their name and help, and, with label names, a child per `labels(...)`."""

    __slots__ = ("children", "documentation", "labelnames", "name", "value")

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.value = 0.0
        self.children: dict[tuple[str, ...], Self] = {}

    def labels(self, *values: str, **named: str) -> Self:
        key = values or tuple(named[name] for name in self.labelnames)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = type(self)(self.name, self.documentation)
        return child

    def read(self) -> float:
        return self.value

    def collect(self) -> Metric:
        family = self._family()(self.name, self.documentation, labels=self.labelnames)
        for values, metric in self.children.items() if self.labelnames else (((), self),):
            family.add_metric(values, metric.read())
        return family

    @staticmethod
    def _family() -> type[CounterMetricFamily | GaugeMetricFamily]:
        raise NotImplementedError


class Counter(_Labelled):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    @staticmethod
    def _family() -> type[CounterMetricFamily]:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415  # at scrape time, see the module

        return CounterMetricFamily


class Gauge(_Labelled):
    """A gauge, set, or read at scrape time (`set_function`)."""

    __slots__ = ("function",)

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self.function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self.function = function

    def remove(self, *values: str) -> None:
        self.children.pop(values, None)

    def read(self) -> float:
        return self.value if self.function is None else float(self.function())

    @staticmethod
    def _family() -> type[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415  # at scrape time, see the module

        return GaugeMetricFamily


class Histogram:
    """Observations counted in buckets by their upper bounds (each counts what is at most its bound), and summed."""

    __slots__ = ("bounds", "counts", "documentation", "les", "name", "sum")

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = (*buckets, float("inf"))
        self.les = (*map(repr, buckets), "+Inf")  # as prometheus-client writes them: 0.0001, 1.0, +Inf
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Metric:
        from prometheus_client.core import HistogramMetricFamily  # noqa: PLC0415  # at scrape time, see the module

        cumulative, buckets = 0, []
        for le, count in zip(self.les, self.counts, strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        return HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


class PeerCollector:
    """The peer table, read at scrape time: series only for the peers in it now (bounded by
    sidecar.peer_table.MAX_PEERS), so a peer that is gone leaves no series behind."""

    def __init__(self, rows: PeerRows) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415  # at scrape time, see the module

        rows = self._rows()
        yield GaugeMetricFamily("syncar_peers", "Other daemons heard on the key's announcements", value=len(rows))
        age = GaugeMetricFamily(
            "syncar_peer_heard_seconds", "Seconds since each peer's last announcement", labels=["peer"]
        )
        lag = GaugeMetricFamily(
            "syncar_peer_lag_events",
            "Events of each peer's run, by its last announcement, not received here (syncar codec)",
            labels=["peer"],
        )
        for instance, seconds, behind in rows:
            age.add_metric([instance], seconds)
            if behind is not None:
                lag.add_metric([instance], behind)
        yield age
        yield lag


class Metrics:
    def __init__(self, backend: str, codec: str) -> None:
        self.published = Counter("syncar_events_published", "Events published by local clients")
        self.sent = Counter("syncar_events_sent", "Events the broker accepted from this daemon")
        self.messages_sent = Counter(
            "syncar_broker_messages_sent",
            "Broker messages sent; one carries a batch of events with the syncar codec",
        )
        self.received = Counter("syncar_events_received", "Events received from other instances via the broker")
        self.missed = Counter(
            "syncar_events_missed",
            "Events of other instances that went by on the bus and never reached this daemon, "
            "seen by their sequence numbers (syncar codec)",
        )
        self.resume_missed = Counter(
            "syncar_resume_missed",
            "Events local clients resumed too late for, gone from the replay buffer (resume_gap): every event "
            "numbered after their seq, their own and those they would not want included",
        )
        self.delivered = Counter("syncar_events_delivered", "Event frames written to local clients")
        self.dropped = Counter("syncar_events_dropped", "Events dropped, by reason", ("reason",))
        self.frame_errors = Counter("syncar_frame_errors", "Bad frames from clients, by error code", ("code",))
        self.disconnects = Counter(
            "syncar_client_disconnects",
            "Clients syncar disconnected, by reason (slow_client, too_many_clients, forbidden, client_id_in_use)",
            ("reason",),
        )
        self.broker_up = Gauge("syncar_broker_up", "1 while the broker connection is up")
        self.reconnects = Counter("syncar_backend_reconnects", "Broker connections restored after a loss")
        self.broker_node = Gauge(
            "syncar_broker_node_info",
            "1 for the broker node this daemon is connected to, 0 while that connection is down",
            ("node",),
        )
        self.failovers = Counter(
            "syncar_broker_failovers",
            "Broker connections restored on another node than the one lost",
        )
        self.resubscribes = Counter(
            "syncar_bus_resubscribes",
            "Subscriptions made again after the bus was silent for three announcement intervals",
        )
        self.announcements_rejected = Counter(
            "syncar_announcements_rejected",
            "Announcements dropped, by reason (malformed, or a signature check's: unsigned, bad_signature, ...)",
            ("reason",),
        )
        self.clients = Gauge("syncar_clients", "Connected clients")
        self.outbox_events = Gauge("syncar_outbox_events", "Events waiting for the broker")
        self.outbox_bytes = Gauge("syncar_outbox_bytes", "Bytes waiting for the broker")
        self.replay_events = Gauge("syncar_replay_events", "Events held for clients that resume")
        self.replay_bytes = Gauge("syncar_replay_bytes", "Bytes held for clients that resume")
        self.backlog_paused = Gauge(
            "syncar_backlog_paused", "1 while durable mode leaves the backlog on the broker: no app, replay buffer full"
        )
        self.publish_seconds = Histogram(
            "syncar_publish_seconds",
            "From a client's publish to the broker accepting it",
            buckets=LATENCY_BUCKETS,
        )
        self.relay_seconds = Histogram(
            "syncar_relay_seconds",
            "From publish on the origin instance to delivery here (includes the clock difference between the hosts)",
            buckets=LATENCY_BUCKETS,
        )
        self.implausible_times = Counter(
            "syncar_implausible_times",
            "Broker messages not measured in syncar_relay_seconds: their time is over a "
            "minute ahead of this host's clock or older than --instance-ttl",
        )
        self._build = {"version": __version__, "backend": backend, "codec": codec}
        self._peers: PeerCollector | None = None
        self._registry: CollectorRegistry | None = None
        self._last_node: str | None = None

    def follow_node(self, node: str | None) -> None:
        """The broker node connected to, None while the connection is down: one `syncar_broker_node_info` series, the
        last node's, 1 while connected to it; another node than the last is a failover."""
        last = self._last_node
        if node is None:
            if last is not None:
                self.broker_node.labels(node=last).set(0)
            return
        if last is not None and node != last:
            self.broker_node.remove(last)
            self.failovers.inc()
        self._last_node = node
        self.broker_node.labels(node=node).set(1)

    def watch_peers(self, rows: PeerRows) -> None:
        """Export the peer table: `syncar_peers`, and per peer `syncar_peer_heard_seconds`, `syncar_peer_lag_events`."""
        self._peers = PeerCollector(rows)
        if self._registry is not None:
            self._registry.register(self._peers)

    @property
    def registry(self) -> CollectorRegistry:
        """prometheus-client's registry of these metrics, for `/metrics` (and tests), made when first asked for."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry  # noqa: PLC0415  # at the first scrape, see the module

            self._registry = CollectorRegistry()
            self._registry.register(self)
            if self._peers is not None:
                self._registry.register(self._peers)
        return self._registry

    def collect(self) -> Iterator[Metric]:
        """Every metric but the peer table's, in the order defined above, then the build's info."""
        from prometheus_client.core import InfoMetricFamily  # noqa: PLC0415  # at scrape time, see the module

        for metric in vars(self).values():
            if isinstance(metric, Counter | Gauge | Histogram):
                yield metric.collect()
        yield InfoMetricFamily("syncar_build", "syncar version and configuration", value=self._build)
