"""Every Prometheus metric syncar exports, defined once, per daemon, and their text at `/metrics`.

Label sets are small and fixed: no per-event, per-path or per-client labels.
Gauges read their value at scrape time, so they cost nothing on the hot path.

The metrics are plain numbers, written out in Prometheus's text format here (`Metrics.render`), as prometheus-client's
`generate_latest` writes the same metrics, byte for byte (`tests/unit/test_metrics.py` holds them to it), without
`*_created` series (when a metric was made), which no query here needs: rate() finds counter resets without them.
prometheus-client itself is not imported: its package imports its HTTP servers, `urllib.request`, `wsgiref` and
`email`, 2.1 MiB of resident memory and ~20 ms of CPU that every scraped daemon paid at its first scrape, for text
that takes a few lines to write (docs/benchmarks.md). A counter is a float added to, without a lock: every metric is
touched from the event loop's thread only.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Self

from sidecar import __version__

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


def number(value: float) -> str:
    """A sample's value as Prometheus's text format (and prometheus-client) writes it: 3.0, +Inf, 1.5e+07."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go, which reads it, writes exponents from 10^7 on; repr() only from 10^16
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def labelled(names: Iterable[str], values: Iterable[str]) -> str:
    """`{name="value",...}`, sorted by name, the values escaped; nothing without labels."""
    pairs = sorted(zip(names, values, strict=True))
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{escaped(value)}"' for name, value in pairs) + "}"


def escaped(text: str) -> str:
    """A label value or a help text with its backslashes, line ends and double quotes escaped."""
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def heading(name: str, documentation: str, kind: str) -> str:
    """A metric's `# HELP` and `# TYPE` lines."""
    documentation = documentation.replace("\\", r"\\").replace("\n", r"\n")  # a help text keeps its quotes
    return f"# HELP {name} {documentation}\n# TYPE {name} {kind}\n"


class _Labelled:
    """What a counter and a gauge share: their name and help, and, with label names, a child per `labels(...)`."""

    __slots__ = ("children", "documentation", "labelnames", "name", "value")

    #: The type in `# TYPE`, and what the samples' name adds to the metric's.
    kind, suffix = "", ""

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

    def render(self, lines: list[str]) -> None:
        name = self.name + self.suffix
        lines.append(heading(name, self.documentation, self.kind))
        for values, metric in self.children.items() if self.labelnames else (((), self),):
            lines.append(f"{name}{labelled(self.labelnames, values)} {number(metric.read())}\n")


class Counter(_Labelled):
    __slots__ = ()
    kind, suffix = "counter", "_total"

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Gauge(_Labelled):
    """A gauge, set, or read at scrape time (`set_function`)."""

    __slots__ = ("function",)
    kind = "gauge"

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


class Histogram:
    """Observations counted in buckets by their upper bounds (each counts what is at most its bound), and summed."""

    __slots__ = ("bounds", "counts", "documentation", "les", "name", "sum")

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = (*buckets, float("inf"))
        self.les = (*map(number, buckets), "+Inf")
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def render(self, lines: list[str]) -> None:
        lines.append(heading(self.name, self.documentation, "histogram"))
        cumulative = 0
        for le, count in zip(self.les, self.counts, strict=True):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{le}"}} {number(cumulative)}\n')
        lines.append(f"{self.name}_count {number(cumulative)}\n{self.name}_sum {number(self.sum)}\n")


def render_peers(rows: list[tuple[str, float, int | None]], lines: list[str]) -> None:
    """The peer table, read at scrape time: series only for the peers in it now (bounded by
    sidecar.fleet.MAX_PEERS), so a peer that is gone leaves no series behind."""
    lines.append(heading("syncar_peers", "Other daemons heard on the key's announcements", "gauge"))
    lines.append(f"syncar_peers {number(len(rows))}\n")
    lines.append(heading("syncar_peer_heard_seconds", "Seconds since each peer's last announcement", "gauge"))
    lines.extend(f"syncar_peer_heard_seconds{labelled(('peer',), (peer,))} {number(age)}\n" for peer, age, _ in rows)
    lines.append(
        heading(
            "syncar_peer_lag_events",
            "Events of each peer's run, by its last announcement, not received here (syncar codec)",
            "gauge",
        )
    )
    lines.extend(
        f"syncar_peer_lag_events{labelled(('peer',), (peer,))} {number(lag)}\n"
        for peer, _, lag in rows
        if lag is not None
    )


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
        self._peers: PeerRows | None = None

    def watch_peers(self, rows: PeerRows) -> None:
        """Export the peer table: `syncar_peers`, and per peer `syncar_peer_heard_seconds`, `syncar_peer_lag_events`."""
        self._peers = rows

    def render(self) -> bytes:
        """The text of `/metrics`: every metric in the order defined above, the build's info, then the peer table."""
        lines: list[str] = []
        for metric in vars(self).values():
            if isinstance(metric, Counter | Gauge | Histogram):
                metric.render(lines)
        lines.append(heading("syncar_build_info", "syncar version and configuration", "gauge"))
        lines.append(f"syncar_build_info{labelled(self._build, self._build.values())} 1.0\n")
        if self._peers is not None:
            render_peers(self._peers(), lines)
        return "".join(lines).encode()
