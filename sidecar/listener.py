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
from sidecar.logging import RateLimitedLogger
from sidecar.paths import unsafe_dir_reason

log = logging.getLogger(__name__)

BACKLOG = 1024
#: Connections taken per wake-up of the listening socket, so a burst of them does not hold the loop.
ACCEPT_BATCH = 64
refusals = RateLimitedLogger(log, interval=10.0)
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
            raise StartupError(
                f"socket: cannot remove the stale socket {path} (owner uid {path.lstat().st_uid}): "
                f"{exc.strerror}; remove it as its owner or pick another --socket"
            ) from None
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
        raise StartupError(
            f"socket: {path} is too long ({len(os.fsencode(path))} bytes); a unix socket path takes at "
            f"most {MAX_PATH_BYTES} bytes: pick a shorter --socket"
        )
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)  # group may reach the socket, others not
    except OSError as exc:
        raise StartupError(f"socket: cannot create directory {path.parent}: {exc.strerror}") from None
    if private_dir and (reason := unsafe_dir_reason(path.parent)) is not None:
        raise StartupError(
            f"socket: refusing directory {path.parent}: {reason}, so another user could replace the "
            f"socket; remove it, or set --socket / SYNCAR_SOCKET to a path in a directory only you "
            f"can write"
        )
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
    """Accepts app connections on the unix socket, with its own accept loop.

    Not create_unix_server: under uvloop, libuv meets a full descriptor table by accepting and closing the newcomer
    itself, so apps are cut off with nothing logged. Here that is logged, and the newcomer gets `overflow` (an
    error frame) before it is closed, through a descriptor kept in reserve for that moment.
    """

    def __init__(
        self,
        path: Path,
        mode: int,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        private_dir: bool = False,
        overflow: bytes = b"",
    ) -> None:
        self.path = path
        self.mode = mode
        self.private_dir = private_dir
        self._factory = protocol_factory
        self._overflow = overflow
        self._sock: socket.socket | None = None
        self._reserve: int | None = None
        self._inode: int | None = None
        self._setting_up: set[asyncio.Task[object]] = set()
        self._serving = False

    @property
    def listening(self) -> bool:
        """True while apps are served: bound and accepting."""
        return self._sock is not None and self._serving

    def bind(self) -> None:
        """Claim the path: bound and listening, nothing accepted yet (`serve()`). StartupError if it cannot be.

        From here on the path is ours: another syncar started on it finds it in use, and an app that connects
        waits in the listen backlog (BACKLOG) until `serve()`, its `hello` unread. That is intended: the daemon
        binds before it connects to the broker, so that a start that cannot have the socket does nothing on the
        broker, and it serves only once that connect has succeeded or been given up on.
        """
        sock = bind_unix(self.path, self.mode, private_dir=self.private_dir)
        self._inode = os.stat(self.path).st_ino
        self._reserve = _reserve()
        self._sock = sock

    def serve(self) -> None:
        """Accept the apps, those waiting in the backlog first; after `bind()`."""
        assert self._sock is not None, "serve() before bind()"
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept, self._sock)
        self._serving = True
        log.info("listening on %s (mode %04o)", self.path, self.mode)

    def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._out_of_descriptors(sock, exc)
                    return
                if exc.errno != errno.ECONNABORTED:  # the peer gave up while waiting: nothing to do
                    refusals.warning("accept", "socket: accept failed: %s", exc.strerror)
                    return
                continue
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(self._factory, conn))
            self._setting_up.add(task)
            task.add_done_callback(self._set_up)

    def _set_up(self, task: asyncio.Task[object]) -> None:
        self._setting_up.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            refusals.warning("setup", "socket: cannot set up a connection: %s", exc)

    def _out_of_descriptors(self, sock: socket.socket, exc: OSError) -> None:
        refusals.warning(
            "emfile",
            "socket: out of file descriptors (%s), an app was refused: raise the limit "
            "(ulimit -n, systemd LimitNOFILE=) or find what holds them (ls /proc/%d/fd)",
            exc.strerror,
            os.getpid(),
        )
        if self._reserve is None:
            self._reserve = _reserve()  # spent last time and not yet back: try again
            return
        os.close(self._reserve)
        try:
            for _ in range(ACCEPT_BATCH):  # the waiting ones too, or they would wait for a descriptor in vain
                conn, _ = sock.accept()
                with contextlib.suppress(OSError):
                    conn.send(self._overflow)
                conn.close()
        except OSError:
            pass
        finally:
            self._reserve = _reserve()

    def stop_accepting(self) -> None:
        if self._sock is not None:
            if self._serving:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
                self._serving = False
            self._sock.close()  # from now on an app connecting is refused at once, not left in the backlog
            self._sock = None
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def remove(self) -> None:
        """Delete the socket file if it is still ours (another daemon may have replaced it)."""
        self.stop_accepting()
        if self._inode is None:  # never bound: whatever is at the path is not ours (and may not be readable)
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()


def _reserve() -> int | None:
    """A descriptor to give back when the table is full, so that there is one to accept with."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
