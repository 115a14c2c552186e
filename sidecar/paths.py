"""Where syncar's files live by default. Standard library only, so a client can find the daemon without pydantic."""

from __future__ import annotations

import os
from pathlib import Path


def default_socket_path() -> Path:
    """Where the socket lives unless told: a directory the current user may create on a fresh machine."""
    if os.geteuid() == 0:
        return Path("/run/syncar/syncar.sock")
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.access(runtime_dir, os.W_OK):
        return Path(runtime_dir) / "syncar" / "syncar.sock"
    return Path(f"/tmp/syncar-{os.geteuid()}/syncar.sock")
