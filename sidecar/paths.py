"""Where syncar's files live by default. Standard library only, so a client can find the daemon without pydantic."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def default_socket_path() -> Path:
    """Where the socket lives unless told: a directory the current user may create on a fresh machine."""
    if os.geteuid() == 0:
        return Path("/run/syncar/syncar.sock")
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and unsafe_dir_reason(Path(runtime_dir)) is None:
        return Path(runtime_dir) / "syncar" / "syncar.sock"
    return Path(f"/tmp/syncar-{os.geteuid()}/syncar.sock")


def unsafe_dir_reason(path: Path) -> str | None:
    """Why another user could replace what is in `path`, or None if only we can write to it.

    The rules of ssh-agent and of XDG_RUNTIME_DIR: a real directory (not a symbolic link), owned by the
    effective user, not writable by its group or by others.
    """
    try:
        info = path.lstat()
    except OSError as exc:
        return f"cannot check it: {exc.strerror}"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if info.st_uid != os.geteuid():
        return f"it belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})"
    if info.st_mode & 0o022:
        return f"its mode {stat.S_IMODE(info.st_mode):04o} lets other users write to it"
    return None
