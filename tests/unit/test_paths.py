"""sidecar.paths is what a client imports to find the daemon: it must not pull in the daemon's dependencies."""

from __future__ import annotations

import subprocess
import sys


def test_paths_imports_only_the_standard_library() -> None:
    code = ("import sys, sidecar.paths\n"
            "print(sorted(m for m in ('pydantic', 'pydantic_settings', 'msgspec') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
