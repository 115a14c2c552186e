"""The daemon's OpenTelemetry spans (`--tracing`), exported with OTLP over HTTP. See docs/tracing.md.

One span per broker message, not per event, following the messaging semantic conventions: a `publish <key>` span
(PRODUCER) for each batch the broker accepted, from the write to the broker's answer (sidecar/outbox.py), and a
`receive <key>` span (CONSUMER) for each broker message of another instance that carries events, over its unpacking
(TracedCodec). Each links to the trace contexts its events were published in (the apps' `traceparent`), at most
MAX_LINKS of them: a batch of events from many traces has no one parent. The mark a daemon puts on the key with
each announcement on RabbitMQ (sidecar/fleet.py), an empty batch, makes no span on either side: it goes out beside
the outbox, and one span per announcement interval per peer, linked to nothing, would only be noise in a trace.

Only imported when `--tracing` is on: its packages come with the `otel` extra (`pip install 'syncar[otel]'`), and
without it nothing of OpenTelemetry is loaded. Spans are handed to a BatchSpanProcessor, whose thread exports
them: the event loop only builds them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar import __version__
from sidecar.codec import Batch, Codec, Event, Outgoing

#: Links per span at most: the SDK's default limit, and as many trace contexts as a span is worth reading.
MAX_LINKS = 128
#: Seconds an export may take; the daemon's shutdown waits for the last one up to its own deadline.
EXPORT_TIMEOUT = 5.0
#: `messaging.system` for each backend (the semantic conventions' names where they have one).
SYSTEMS = {"redis": "redis", "amqp": "rabbitmq", "nats": "nats", "local": "syncar"}

_propagator = TraceContextTextMapPropagator()


class Tracing:
    """Makes the spans of one daemon: its own provider (nothing global), so that daemons in one process keep apart.

    Args:
        endpoint: the OTLP/HTTP traces URL; None: the exporter's own default (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318/v1/traces).
    """

    def __init__(self, *, instance_id: str, backend: str, key: str, endpoint: str | None) -> None:
        resource = Resource.create(
            {"service.name": "syncar", "service.instance.id": instance_id, "service.version": __version__}
        )
        self._provider = TracerProvider(resource=resource, span_limits=SpanLimits(max_links=MAX_LINKS))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint, timeout=EXPORT_TIMEOUT)))
        self._tracer = self._provider.get_tracer("syncar", __version__)
        self._key = key
        self._system = SYSTEMS.get(backend, backend)

    def published(self, events: Iterable[Event], count: int, started_ns: int) -> None:
        """The broker accepted a batch of `count` events, written from `started_ns` (time.time_ns()) until now."""
        self._span("publish", SpanKind.PRODUCER, events, count, started_ns)

    def received(self, events: Iterable[Event], count: int, started_ns: int) -> None:
        """A broker message of `count` events from another instance was taken in from `started_ns` until now."""
        self._span("receive", SpanKind.CONSUMER, events, count, started_ns)

    def _span(self, operation: str, kind: SpanKind, events: Iterable[Event], count: int, started_ns: int) -> None:
        span = self._tracer.start_span(
            f"{operation} {self._key}",
            kind=kind,
            links=_links(events),
            start_time=started_ns,
            attributes={
                "messaging.system": self._system,
                "messaging.destination.name": self._key,
                "messaging.operation.type": operation,
                "messaging.operation.name": operation,
                "messaging.batch.message_count": count,
            },
        )
        span.end(time.time_ns())

    def shutdown(self) -> None:
        """Export what is left and stop the export thread; blocks for up to EXPORT_TIMEOUT per export."""
        self._provider.shutdown()


def _links(events: Iterable[Event]) -> list[Link]:
    """The valid trace contexts of `events`, MAX_LINKS at most. Those from the bus were checked by no one (another
    instance's app, a stranger): OpenTelemetry's own W3C parser decides."""
    links: list[Link] = []
    for event in events:
        if event.traceparent is None:
            continue
        carrier = {"traceparent": event.traceparent}
        if event.tracestate is not None:
            carrier["tracestate"] = event.tracestate
        context = get_current_span(_propagator.extract(carrier)).get_span_context()
        if context.is_valid:
            links.append(Link(context))
            if len(links) == MAX_LINKS:
                break
    return links


class TracedCodec(Codec):
    """Wraps a codec (signed or not): a `receive` span for every broker message with events it unpacks, over the
    unpacking (and the signature check). Our own echoes are recognised before that (`echoed`) and get none, nor do
    the marks of other daemons (empty batches)."""

    name = "traced"

    def __init__(self, inner: Codec, tracing: Tracing) -> None:
        super().__init__(inner.instance_id)
        self.overhead = inner.overhead
        self.carries_ids = inner.carries_ids
        self.packs_parts = inner.packs_parts
        self._inner = inner
        self._tracing = tracing

    def pack(self, events: list[Outgoing], seq: int = 1) -> list[bytes]:
        return self._inner.pack(events, seq)

    def refresh(self, bodies: list[bytes]) -> list[bytes]:
        return self._inner.refresh(bodies)

    def echoed(self, body: bytes) -> int:
        return self._inner.echoed(body)

    def unpack(self, body: bytes, accepted_at: float | None = None) -> Batch:
        started = time.time_ns()
        batch = self._inner.unpack(body, accepted_at)
        if batch.events:  # a mark (sidecar/fleet.py) carries none: a span of it would be one per interval per peer
            self._tracing.received(batch.events, len(batch.events), started)
        return batch
