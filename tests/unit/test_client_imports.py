"""What a client imports must not pull in the daemon's dependencies: sidecar.paths (to find the daemon) and the
Python client itself. pydantic alone made `import sidecar.client` take ~150 ms of CPU instead of ~50."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: The daemon's: validation (pydantic, msgspec), settings, metrics; the making of bus ids (sidecar.dedup, with hmac
#: and secrets: ~2 ms of the client's import).
DAEMON_ONLY = ("pydantic", "pydantic_settings", "msgspec", "prometheus_client", "sidecar.dedup", "hmac", "secrets")


@pytest.mark.parametrize("module", ["sidecar.paths", "sidecar.client"])
def test_a_client_module_imports_none_of_the_daemons_dependencies(module: str) -> None:
    code = f"import sys, {module}\nprint(sorted(m for m in {DAEMON_ONLY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
