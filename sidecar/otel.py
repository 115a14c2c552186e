"""What the daemon takes of OpenTelemetry: the tracing SDK only with `--tracing`, and never the metrics that
redis-py imports on its own."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sidecar.codec import Codec
from sidecar.config import Settings
from sidecar.errors import ConfigError

if TYPE_CHECKING:  # imported only with --tracing (the otel extra)
    from sidecar.tracing import Tracing


def traced(settings: Settings, backend: str, codec: Codec) -> tuple[Tracing, Codec]:
    """The daemon's spans (--tracing), from the otel extra's packages, and `codec` wrapped to make receive spans.

    Raises:
        ConfigError: they are not installed.
    """
    try:
        from sidecar.tracing import TracedCodec, Tracing  # noqa: PLC0415  (OpenTelemetry only with --tracing)
    except ImportError as exc:
        raise ConfigError(
            f"tracing: OpenTelemetry's SDK and OTLP exporter are not installed ({exc.name}): pip install 'syncar[otel]'"
        ) from None
    tracing = Tracing(
        instance_id=settings.instance_id, backend=backend, key=settings.key, endpoint=settings.tracing_endpoint
    )
    return tracing, TracedCodec(codec, tracing)


#: OpenTelemetry's metrics, API and SDK: redis-py 8 imports them at its own import when they are installed
#: (syncar[otel] installs them), for metrics of its own that only a call to its observability API turns on, which
#: syncar never makes. The SDK cost 2.2 MiB and ~40 ms of CPU at every start, the API 0.3 MiB and ~5 ms more.
OTEL_METRICS = ("opentelemetry.sdk.metrics", "opentelemetry.metrics")


@contextlib.contextmanager
def without_otel_metrics() -> Iterator[None]:
    """OpenTelemetry's metrics (`OTEL_METRICS`) cannot be imported within, unless imported already.

    Blocked, redis-py takes them for absent. The block ends with the import: `--tracing` uses the tracing SDK.
    """
    blocked = [name for name in OTEL_METRICS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # an import of it now fails: the documented way
    try:
        yield
    finally:
        for name in blocked:
            del sys.modules[name]
