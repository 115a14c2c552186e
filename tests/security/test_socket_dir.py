"""The socket's directory: another local user must not be able to put their socket where apps look for ours."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils import REPO, SpawnedDaemon

NOBODY = 65534


@pytest.fixture
def uid() -> Iterator[int]:
    """A uid of nobody in particular for the daemon, and its default socket directory cleaned up after."""
    uid = 40000 + os.getpid() % 20000
    yield uid
    path = default_dir(uid)
    if path.is_symlink():
        path.unlink()
    shutil.rmtree(path, ignore_errors=True)


def default_dir(uid: int) -> Path:
    return Path(f"/tmp/syncar-{uid}")


async def refusal(uid: int, socket: Path, log_dir: Path, *args: str) -> str:
    """Start the daemon as `uid` with no XDG_RUNTIME_DIR; it must exit 3. Returns its log."""
    daemon = SpawnedDaemon(socket, "--http", "off", *args, user=uid, log_dir=log_dir, env={"XDG_RUNTIME_DIR": ""})
    try:
        code = await daemon.exited()
    finally:
        daemon.kill()
    assert code == 3, daemon.log
    return daemon.log


@pytest.mark.parametrize("owner, mode", [(NOBODY, 0o777), (NOBODY, 0o700)], ids=["world-writable", "not-ours"])
async def test_a_default_directory_another_user_made_is_refused(
    uid: int, sock_dir: Path, owner: int, mode: int
) -> None:
    hostile = default_dir(uid)
    hostile.mkdir()
    os.chown(hostile, owner, owner)
    hostile.chmod(mode)
    log = await refusal(uid, hostile / "syncar.sock", sock_dir)
    (line,) = (line for line in log.splitlines() if "cannot start" in line)
    assert f"socket: refusing directory {hostile}: it belongs to uid {NOBODY}, not to this user (uid {uid})" in line
    assert "--socket" in line
    assert list(hostile.iterdir()) == []


async def test_a_default_directory_open_to_others_or_a_symlink_is_refused(uid: int, sock_dir: Path) -> None:
    ours = default_dir(uid)
    ours.mkdir(mode=0o700)
    os.chown(ours, uid, uid)
    ours.chmod(0o770)  # our own, but the group may write
    assert "its mode 0770 lets other users write to it" in await refusal(uid, ours / "syncar.sock", sock_dir)
    ours.rmdir()
    sock_dir.chmod(0o711)
    elsewhere = sock_dir / "theirs"
    elsewhere.mkdir(mode=0o700)
    os.chown(elsewhere, uid, uid)  # even a directory the daemon could use, if reached through someone's link
    ours.symlink_to(elsewhere)
    assert "it is a symbolic link" in await refusal(uid, ours / "syncar.sock", sock_dir)
    assert list(elsewhere.iterdir()) == []


async def test_the_default_directory_is_made_private_and_used(uid: int, sock_dir: Path) -> None:
    path = default_dir(uid) / "syncar.sock"
    daemon = SpawnedDaemon(path, "--http", "off", user=uid, log_dir=sock_dir, env={"XDG_RUNTIME_DIR": ""})
    try:
        await daemon.ready()
        info = path.parent.lstat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode) & 0o022) == (uid, 0)
        assert path.lstat().st_uid == uid
        assert await daemon.stop() == 0
    finally:
        daemon.kill()


def test_an_xdg_runtime_dir_others_can_write_is_not_used(uid: int, sock_dir: Path) -> None:
    sock_dir.chmod(0o777)
    code = (
        "import os, sys, sidecar.paths\n"
        "os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[1]))\n"
        "print(sidecar.paths.default_socket_path())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(uid)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "XDG_RUNTIME_DIR": str(sock_dir)},
        timeout=30,
    )
    assert result.stdout.strip() == f"/tmp/syncar-{uid}/syncar.sock"


async def test_a_stale_socket_of_another_user_is_named_in_the_error(uid: int, sock_dir: Path) -> None:
    sock_dir.chmod(0o1777)  # sticky, as /tmp: only a file's owner may remove it
    stale = sock_dir / "syncar.sock"
    with socket.socket(socket.AF_UNIX) as left:
        left.bind(str(stale))
    os.chown(stale, NOBODY, NOBODY)
    stale.chmod(0o666)
    log = await refusal(uid, stale, sock_dir)
    assert (
        f"cannot start: socket: cannot remove the stale socket {stale} (owner uid {NOBODY}): Operation not "
        f"permitted; remove it as its owner or pick another --socket" in log
    )
    assert "http" not in log.split("cannot start")[1]
