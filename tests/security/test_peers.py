"""Who may talk to syncar: the socket's mode, and the uid/gid allowlist checked with SO_PEERCRED,
tested with a second user the test creates."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Connect
from tests.utils import metric, run_daemon, unavailable, wait_for

STRANGER = "syncar-test-peer"
# Runs as the other user with the system Python (the venv may live where that user cannot read).
PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("connect failed:", exc.strerror); sys.exit(0)
s.settimeout(5)
try:
    s.sendall(b'{"type":"hello"}\\n')
except OSError:
    pass  # a refused peer may be cut off before its hello; what it was told is still there to read
print(s.recv(4096).decode().strip())
"""


@pytest.fixture(scope="module")
def stranger() -> Iterator[pwd.struct_passwd]:
    """A second local user in group 0, made for this test and removed after it."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        unavailable("the peer tests must run as root to create a second user")
    with contextlib.suppress(KeyError):
        pwd.getpwnam(STRANGER)
        subprocess.run(["userdel", STRANGER], check=True)
    subprocess.run(["useradd", "--no-create-home", "--gid", "0", "--shell", "/usr/sbin/nologin", STRANGER], check=True)
    try:
        yield pwd.getpwnam(STRANGER)
    finally:
        subprocess.run(["userdel", STRANGER], check=False)


def probe_as(user: pwd.struct_passwd, sock: Path) -> str:
    result = subprocess.run(
        ["/usr/bin/python3", "-c", PROBE, str(sock)],
        user=user.pw_uid,
        group=user.pw_gid,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


@pytest.fixture
def shared_dir(sock_dir: Path) -> Path:
    sock_dir.chmod(0o755)  # let the other user reach the socket file; its own mode decides the rest
    return sock_dir


async def test_socket_mode_keeps_other_groups_out(stranger: pwd.struct_passwd, shared_dir: Path) -> None:
    sock = shared_dir / "s.sock"
    async with run_daemon(sock, socket_mode=0o600):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert "Permission denied" in await asyncio.to_thread(probe_as, stranger, sock)
    async with run_daemon(sock, socket_mode=0o660):
        assert '"welcome"' in await asyncio.to_thread(probe_as, stranger, sock)


async def test_uid_allowlist_refuses_others_with_a_clear_error(
    stranger: pwd.struct_passwd, shared_dir: Path, connect: Connect
) -> None:
    sock = shared_dir / "s.sock"
    async with run_daemon(sock, allow_uids=(0,)) as daemon:
        answer = await asyncio.to_thread(probe_as, stranger, sock)
        assert '"forbidden"' in answer
        assert f"uid {stranger.pw_uid}" in answer
        await wait_for(
            lambda: metric(daemon.metrics, "syncar_client_disconnects_total", reason="forbidden") == 1,
            what="the refusal to be counted",
        )
        me = await connect(sock, {})  # root is on the list
        assert me.welcome["type"] == "welcome"


async def test_gid_allowlist_lets_the_group_in(stranger: pwd.struct_passwd, shared_dir: Path) -> None:
    sock = shared_dir / "s.sock"
    async with run_daemon(sock, allow_uids=(12345,), allow_gids=(0,)):
        assert '"welcome"' in await asyncio.to_thread(probe_as, stranger, sock)
