"""The unix-socket server: safe bind (mode, stale files, live peers), accept, and cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from sidecar.errors import StartupError
from sidecar.paths import unsafe_dir_reason

log = logging.getLogger(__name__)

BACKLOG = 1024
#: Linux's sun_path holds 108 bytes, the last one the terminating NUL.
MAX_PATH_BYTES = 107


def _claim_path(path: Path) -> None:
    """Make `path` free to bind: remove a stale socket, refuse a live one or a non-socket file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"socket: {path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"socket: cannot check {path}: {exc.strerror}") from None
        log.info("removing stale socket %s left by a daemon that is gone", path)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # in a sticky directory such as /tmp, only its owner may remove it
            raise StartupError(f"socket: cannot remove the stale socket {path} (owner uid {path.lstat().st_uid}): "
                               f"{exc.strerror}; remove it as its owner or pick another --socket") from None
    else:
        raise StartupError(f"socket: {path} is in use by another running syncar; stop it or pick another --socket")
    finally:
        probe.close()


def bind_unix(path: Path, mode: int, *, private_dir: bool = False) -> socket.socket:
    """Bind a listening socket at `path` with file mode `mode`, never more open than that, even for a moment.

    With `private_dir` (the default location, in a shared place such as /tmp), the directory must be one only this
    user can write to: whoever else can write there could swap the socket for theirs and read every event.
    """
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise StartupError(f"socket: {path} is too long ({len(os.fsencode(path))} bytes); a unix socket path takes at "
                           f"most {MAX_PATH_BYTES} bytes: pick a shorter --socket")
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)  # group may reach the socket, others not
    except OSError as exc:
        raise StartupError(f"socket: cannot create directory {path.parent}: {exc.strerror}") from None
    if private_dir and (reason := unsafe_dir_reason(path.parent)) is not None:
        raise StartupError(f"socket: refusing directory {path.parent}: {reason}, so another user could replace the "
                           f"socket; remove it, or set --socket / SYNCAR_SOCKET to a path in a directory only you "
                           f"can write")
    _claim_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask closes the window between bind() and chmod() in which the file would have default permissions.
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartupError(f"socket: cannot bind {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


class Listener:
    def __init__(self, path: Path, mode: int, protocol_factory: Callable[[], asyncio.Protocol], *,
                 private_dir: bool = False) -> None:
        self.path = path
        self.mode = mode
        self.private_dir = private_dir
        self._factory = protocol_factory
        self._server: asyncio.Server | None = None
        self._inode: int | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        sock = bind_unix(self.path, self.mode, private_dir=self.private_dir)
        self._inode = os.stat(self.path).st_ino
        self._server = await asyncio.get_running_loop().create_unix_server(self._factory, sock=sock, backlog=BACKLOG)
        log.info("listening on %s (mode %04o)", self.path, self.mode)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def remove(self) -> None:
        """Delete the socket file if it is still ours (another daemon may have replaced it)."""
        self.stop_accepting()
        if self._inode is None:  # never bound: whatever is at the path is not ours (and may not be readable)
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
