"""--tracing: the daemons' OpenTelemetry spans, received by an OTLP/HTTP endpoint this test serves on loopback and
decoded from OTLP's protobuf; and without --tracing, nothing of OpenTelemetry is loaded."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from pydantic import ValidationError

from sidecar.client import Client
from sidecar.config import Settings
from tests.brokers import BrokerServer
from tests.contract.raw import raw_subscriber
from tests.utils import TIMEOUT, run_daemon, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_IDS = ("00f067aa0ba902b7", "00f067aa0ba902b8", "00f067aa0ba902b9")


@dataclass
class Received:
    """A span as the collector got it, with its resource's service.instance.id."""

    instance: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace id, span id): the SDK's OTLP encoder leaves a link's trace state out


class Collector:
    """An OTLP/HTTP traces endpoint: decodes every export request and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        self.requests += 1
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Received(
                            resource.get("service.instance.id", ""),
                            span.name,
                            span.kind,
                            {a.key: _value(a.value) for a in span.attributes},
                            [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        )
                    )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


@pytest.fixture
def collector() -> Iterator[Collector]:
    collector = Collector()
    yield collector
    collector.close()


def traced(backend: str, collector: Collector, **more: Any) -> dict[str, Any]:
    """The settings of daemons that trace to `collector`, on a key of their own."""
    key = f"traced-{uuid.uuid4().hex[:8]}"
    return {
        "backend": backend,
        "key": key,
        "tracing": True,
        "tracing_endpoint": collector.url,
        "shutdown_timeout": 15.0,
        **more,
    }


@pytest.mark.redis
async def test_spans_per_broker_message_linked_to_the_apps_trace_context(
    sock_dir: Path, redis_server: BrokerServer, collector: Collector
) -> None:
    settings = traced(redis_server.uri, collector)
    key = settings["key"]
    async with (
        run_daemon(sock_dir / "a.sock", instance_id="pub", **settings),
        run_daemon(sock_dir / "b.sock", instance_id="sub", **settings),
        Client(sock_dir / "a.sock") as publisher,
        Client(sock_dir / "b.sock") as subscriber,
    ):
        for n, span_id in enumerate(SPAN_IDS):
            await publisher.publish(
                "messages", "created", n, traceparent=f"00-{TRACE_ID}-{span_id}-01", tracestate=f"rojo={n}"
            )
        await publisher.publish("messages", "created", 3, id="last", ack=True)  # no trace context
        received = [(await subscriber.next_event(timeout=TIMEOUT)).data for _ in range(4)]
        assert received == [0, 1, 2, 3]
    # The daemons' shutdown exported what was left.
    await wait_for(lambda: {"pub", "sub"} <= {s.instance for s in collector.spans}, what="spans of both daemons")
    expected_links = sorted((TRACE_ID, span_id) for span_id in SPAN_IDS)
    roles = (("pub", "publish", SpanProto.SPAN_KIND_PRODUCER), ("sub", "receive", SpanProto.SPAN_KIND_CONSUMER))
    for instance, operation, kind in roles:
        spans = [s for s in collector.spans if s.instance == instance]
        assert {s.name for s in spans} == {f"{operation} {key}"}
        assert {s.kind for s in spans} == {kind}
        for span in spans:
            assert {k: v for k, v in span.attributes.items() if k != "messaging.batch.message_count"} == {
                "messaging.system": "redis",
                "messaging.destination.name": key,
                "messaging.operation.type": operation,
                "messaging.operation.name": operation,
            }
        # However the outbox batched them, every event is counted once and every trace context linked once.
        assert sum(s.attributes["messaging.batch.message_count"] for s in spans) == 4
        assert sorted(link for s in spans for link in s.links) == expected_links


@pytest.mark.rabbitmq
async def test_a_mark_on_the_key_makes_no_span(
    sock_dir: Path, rabbitmq_server: BrokerServer, collector: Collector
) -> None:
    """On RabbitMQ in broadcast mode a daemon that has published puts a mark on the key with each announcement, an
    empty batch (sidecar/fleet.py): one message per interval per peer, no event in it. Neither the daemon that puts
    it nor those that take it make a span of it: the spans are the two batches of events, one each side."""
    settings = traced(rabbitmq_server.uri, collector, announce_interval=0.2)
    key = settings["key"]
    async with (
        raw_subscriber(rabbitmq_server, key) as on_key,
        run_daemon(sock_dir / "a.sock", instance_id="pub", **settings),
        run_daemon(sock_dir / "b.sock", instance_id="sub", **settings),
        Client(sock_dir / "a.sock") as publisher,
        Client(sock_dir / "b.sock") as subscriber,
    ):
        await publisher.publish("messages", "created", 0, ack=True)
        assert (await subscriber.next_event(timeout=TIMEOUT)).data == 0
        marks: list[bytes] = []

        def marked() -> bool:
            while not on_key.empty():
                if (body := on_key.get_nowait()).endswith(b'"events":[]}'):
                    marks.append(body)
            return len(marks) >= 3

        await wait_for(marked, TIMEOUT, "three marks on the key")
        # The broker put the marks in B's queue as in the plain client's, ahead of this event: B has taken them.
        await publisher.publish("messages", "created", 1, ack=True)
        assert (await subscriber.next_event(timeout=TIMEOUT)).data == 1
    await wait_for(lambda: {"pub", "sub"} <= {s.instance for s in collector.spans}, what="spans of both daemons")
    for instance, operation in (("pub", "publish"), ("sub", "receive")):
        counts = [s.attributes["messaging.batch.message_count"] for s in collector.spans if s.instance == instance]
        assert {s.name for s in collector.spans if s.instance == instance} == {f"{operation} {key}"}
        assert sorted(counts) == [1, 1], (instance, counts)


def test_tracing_without_the_otel_extra_is_a_clean_config_error(sock: Path) -> None:
    """As on a machine where `pip install syncar` was run without `[otel]`: one line that says what to install."""
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # not installed\n"
        "from sidecar.cli import main\n"
        f"sys.exit(main(['run', '--socket', {str(sock)!r}, '--http', 'off', '--tracing']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "tracing: OpenTelemetry's SDK and OTLP exporter are not installed" in result.stderr
    assert "pip install 'syncar[otel]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_tracing_nothing_of_opentelemetry_is_imported(sock: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from sidecar.config import Settings\n"
        "from sidecar.daemon import Daemon\n"
        "async def main():\n"
        f"    async with Daemon(Settings(socket=Path({str(sock)!r}), http='off'), handle_signals=False):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry') or m == 'sidecar.tracing'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_a_tracing_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(ValidationError, match="tracing_endpoint"):
        Settings(tracing_endpoint="localhost:4318")
