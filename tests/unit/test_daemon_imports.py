"""What a daemon imports before its socket answers is its start time and most of its memory at idle: modules it
does not use there stay out. Measured in docs/benchmarks/history.md, "Idle memory, start and peak memory: what was
cut"."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Settings from flags, environment and TOML (pydantic-settings was 1.2 MiB more than pydantic alone); logging
#: configured without `logging.config` (0.8 MiB with `logging.handlers`, `queue`, `pickle`); no TOML reader
#: without a --config file (~2.5 ms of CPU); prometheus-client only at the first scrape of /metrics (~20 ms, 2 MiB).
NEVER = ("pydantic_settings", "logging.config", "logging.handlers", "tomllib", "prometheus_client")

#: A daemon made as `syncar run` makes it, then what it imported.
MADE = """
import sys
from sidecar.commands import build_parser
from sidecar.commands_common import load_settings
from sidecar.daemon import Daemon
from sidecar.logging import configure
settings = load_settings(build_parser().parse_args(["run", "--backend", {uri!r}, "--socket", "/tmp/unused.sock"]))
configure(settings.log_level, settings.log_format)
Daemon(settings, handle_signals=False)
print(sorted(m for m in {never!r} if m in sys.modules))
"""


@pytest.mark.parametrize("uri", ["local://", "redis://127.0.0.1:1", "amqp://127.0.0.1:1", "nats://127.0.0.1:1"])
def test_a_daemon_imports_no_module_it_does_not_use(uri: str) -> None:
    code = MADE.format(uri=uri, never=NEVER)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_redis_py_goes_without_opentelemetry_metrics_and_tracing_still_has_opentelemetry() -> None:
    """redis-py 8 imports OpenTelemetry's metrics SDK and API when installed (2.5 MiB, ~45 ms), for metrics syncar
    never turns on; the daemon keeps them out while the backend is imported, and only then."""
    pytest.importorskip("opentelemetry.sdk.metrics")
    code = (
        MADE.format(uri="redis://127.0.0.1:1", never=("opentelemetry.sdk.metrics", "opentelemetry.metrics"))
        + "import redis.observability.providers as providers, redis.observability.metrics as metrics\n"
        + "print(providers.OTEL_AVAILABLE, metrics.OTEL_AVAILABLE)\n"
        + "import opentelemetry.metrics, opentelemetry.sdk.metrics, opentelemetry.sdk.trace\nprint('importable')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "False", "False", "importable"]


#: `syncar check`, counting what asks for installed packages' entry points, by group.
COUNTED = """
import importlib.metadata, sys
asked = []
every = importlib.metadata.entry_points
importlib.metadata.entry_points = lambda **kw: asked.append(kw.get("group")) or every(**kw)
from sidecar.cli import main
code = main(["check", "--socket", "/tmp/unused.sock"])
print(code, asked)
"""


def test_pydantic_looks_for_no_plugins_at_the_start() -> None:
    """pydantic reads every installed package's entry points at its first model, ~8 ms with 80 packages."""
    out = subprocess.run([sys.executable, "-c", COUNTED], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "0 []"
