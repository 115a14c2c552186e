"""Every Prometheus metric syncar exports, defined once, in a registry per daemon.

Label sets are small and fixed: no per-event, per-path or per-client labels.
Gauges read their value at scrape time, so they cost nothing on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar import __version__

# Otherwise every counter and histogram gets a `*_created` series (when it was made), which no query here needs:
# rate() finds counter resets without it. The switch is process-wide, and syncar is the whole process.
# prometheus_client leaves this function unannotated; its signature, stated here, is all mypy needs.
_disable_created_metrics: Callable[[], None] = prometheus_client.disable_created_metrics
_disable_created_metrics()

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


class PeerCollector(Collector):
    """The peer table, read at scrape time: series only for the peers in it now (bounded by
    sidecar.fleet.MAX_PEERS), so a peer that is gone leaves no series behind."""

    def __init__(self, rows: PeerRows) -> None:
        self._rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
        self.registry = registry = CollectorRegistry()
        self.published = Counter("syncar_events_published", "Events published by local clients", registry=registry)
        self.sent = Counter("syncar_events_sent", "Events the broker accepted from this daemon", registry=registry)
        self.messages_sent = Counter(
            "syncar_broker_messages_sent",
            "Broker messages sent; one carries a batch of events with the syncar codec",
            registry=registry,
        )
        self.received = Counter(
            "syncar_events_received", "Events received from other instances via the broker", registry=registry
        )
        self.missed = Counter(
            "syncar_events_missed",
            "Events of other instances that went by on the bus and never reached this daemon, "
            "seen by their sequence numbers (syncar codec)",
            registry=registry,
        )
        self.delivered = Counter("syncar_events_delivered", "Event frames written to local clients", registry=registry)
        self.dropped = Counter("syncar_events_dropped", "Events dropped, by reason", ["reason"], registry=registry)
        self.frame_errors = Counter(
            "syncar_frame_errors", "Bad frames from clients, by error code", ["code"], registry=registry
        )
        self.disconnects = Counter(
            "syncar_client_disconnects",
            "Clients syncar disconnected, by reason (slow_client, too_many_clients, forbidden)",
            ["reason"],
            registry=registry,
        )
        self.broker_up = Gauge("syncar_broker_up", "1 while the broker connection is up", registry=registry)
        self.reconnects = Counter(
            "syncar_backend_reconnects", "Broker connections restored after a loss", registry=registry
        )
        self.broker_node = Gauge(
            "syncar_broker_node_info",
            "1 for the broker node this daemon is connected to, 0 while that connection is down",
            ["node"],
            registry=registry,
        )
        self.failovers = Counter(
            "syncar_broker_failovers",
            "Broker connections restored on another node than the one lost",
            registry=registry,
        )
        self.resubscribes = Counter(
            "syncar_bus_resubscribes",
            "Subscriptions made again after the bus was silent for three announcement intervals",
            registry=registry,
        )
        self.announcements_rejected = Counter(
            "syncar_announcements_rejected",
            "Announcements dropped, by reason (malformed, or a signature check's: unsigned, bad_signature, ...)",
            ["reason"],
            registry=registry,
        )
        self.clients = Gauge("syncar_clients", "Connected clients", registry=registry)
        self.outbox_events = Gauge("syncar_outbox_events", "Events waiting for the broker", registry=registry)
        self.outbox_bytes = Gauge("syncar_outbox_bytes", "Bytes waiting for the broker", registry=registry)
        self.replay_events = Gauge("syncar_replay_events", "Events held for clients that resume", registry=registry)
        self.replay_bytes = Gauge("syncar_replay_bytes", "Bytes held for clients that resume", registry=registry)
        self.publish_seconds = Histogram(
            "syncar_publish_seconds",
            "From a client's publish to the broker accepting it",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.relay_seconds = Histogram(
            "syncar_relay_seconds",
            "From publish on the origin instance to delivery here (includes the clock difference between the hosts)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.implausible_times = Counter(
            "syncar_implausible_times",
            "Broker messages not measured in syncar_relay_seconds: their time is over a "
            "minute ahead of this host's clock or older than --instance-ttl",
            registry=registry,
        )
        Info("syncar_build", "syncar version and configuration", registry=registry).info(
            {"version": __version__, "backend": backend, "codec": codec}
        )

    def watch_peers(self, rows: PeerRows) -> None:
        """Export the peer table: `syncar_peers`, and per peer `syncar_peer_heard_seconds`, `syncar_peer_lag_events`."""
        self.registry.register(PeerCollector(rows))
