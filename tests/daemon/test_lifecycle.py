"""The daemon as a process: socket hygiene, signals, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.utils import RawClient, SpawnedDaemon, publish_frame, run_daemon, wait_for


async def test_socket_mode_and_removal_on_sigterm(sock: Path) -> None:
    daemon = SpawnedDaemon(sock)
    try:
        await daemon.ready()
        mode = stat.S_IMODE(os.stat(sock).st_mode)
        assert mode == 0o660
        assert str(sock) in daemon.log  # the socket path is printed at startup
        assert await daemon.stop(signal.SIGTERM) == 0
        assert not sock.exists()
    finally:
        daemon.kill()


async def test_custom_socket_mode_whatever_the_umask(sock: Path) -> None:
    old = os.umask(0)
    try:
        daemon = SpawnedDaemon(sock, "--socket-mode", "0600")
    finally:
        os.umask(old)
    try:
        await daemon.ready()
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    finally:
        await daemon.stop()
        daemon.kill()


async def test_sigint_exits_zero(sock: Path) -> None:
    daemon = SpawnedDaemon(sock)
    try:
        await daemon.ready()
        assert await daemon.stop(signal.SIGINT) == 0
        assert not sock.exists()
    finally:
        daemon.kill()


async def test_stale_socket_is_replaced(sock: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: what a crashed daemon leaves
    assert sock.exists()
    daemon = SpawnedDaemon(sock)
    try:
        await daemon.ready()
        assert "stale socket" in daemon.log
        client = await RawClient.connect(sock, {})
        assert client.welcome["type"] == "welcome"
        await client.close()
    finally:
        await daemon.stop()
        daemon.kill()


async def test_socket_of_a_live_daemon_is_refused(sock: Path) -> None:
    first = SpawnedDaemon(sock, name="first")
    try:  # whatever fails, no daemon outlives the test
        await first.ready()
        second = SpawnedDaemon(sock, name="second")
        try:
            assert await second.exited() == 3
            assert "in use by another running syncar" in second.log
            assert "Traceback" not in second.log
            # Nothing about a broker it never served with: only the reason it could not start.
            assert "broker up" not in second.log and "broker down" not in second.log, second.log
        finally:
            second.kill()
        # The first daemon is unharmed and its socket still there.
        client = await RawClient.connect(sock, {})
        await client.close()
        assert await first.stop() == 0
    finally:
        first.kill()


async def test_non_socket_file_is_never_replaced(sock: Path) -> None:
    sock.write_text("precious")
    daemon = SpawnedDaemon(sock)
    try:
        assert await daemon.exited() == 3
        assert "is not a socket" in daemon.log
        assert "Traceback" not in daemon.log
        assert sock.read_text() == "precious"
    finally:
        daemon.kill()


# SIGHUP too: it comes when the terminal that started the daemon closes, and killed it without a flush.
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_a_stop_signal_delivers_what_is_queued_and_tells_clients(sock: Path, stop: signal.Signals) -> None:
    daemon = SpawnedDaemon(sock)
    try:
        await daemon.ready()
        publisher = await RawClient.connect(sock, {})
        listener = await RawClient.connect(sock, {})
        count = 2000
        await publisher.send(
            b"".join(b'{"type":"publish","path":"p","event":"e","data":%d}\n' % i for i in range(count))
        )
        await publisher.send(publish_frame(id="last", ack=True))
        await publisher.frame_of("ack")
        daemon.process.send_signal(stop)
        events = await listener.events(count + 1)
        assert [e["data"] for e in events[:count]] == list(range(count))
        stopping = await listener.frame_of("status")
        assert stopping["stopping"] is True
        assert await listener.closed() == b""
        assert await daemon.exited() == 0
        assert not sock.exists()
        await publisher.close()
        await listener.close()
    finally:
        daemon.kill()


async def test_a_stop_signal_while_the_broker_is_being_reached_stops_in_order(sock: Path) -> None:
    # A broker address that accepts and then never answers: the start waits for it up to its connect timeout.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        daemon = SpawnedDaemon(sock, "--backend", f"redis://127.0.0.1:{silent.getsockname()[1]}")
        try:
            await wait_for(lambda: "starting:" in daemon.log, what="the daemon to begin its start")
            # Before the fix, SIGTERM here killed the process (exit -15) with its start half done.
            assert await daemon.stop(timeout=30) == 0, daemon.log
        finally:
            daemon.kill()
    finally:
        silent.close()
    assert "stopped" in daemon.log
    assert not sock.exists()


async def test_a_daemon_whose_outbox_stopped_stops_itself_saying_why(
    sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox's task ended by what it does not catch (aiormq's CancelledError from a publish, found by review)
    left a daemon that took publishes, sent none, and said it was ready."""
    async with run_daemon(sock) as daemon:
        publish = daemon.backend.publish

        async def cut_short(topic: str, bodies: Sequence[bytes]) -> None:
            if topic == daemon.settings.key:  # the events' publish; the announcements' go on
                raise asyncio.CancelledError
            await publish(topic, bodies)

        monkeypatch.setattr(daemon.backend, "publish", cut_short)
        app = await RawClient.connect(sock, {"v": 1})
        await app.send(publish_frame(data=1))
        await asyncio.wait_for(daemon.serve(), 10)  # it asked itself to stop
        assert daemon.failure is not None and "CancelledError" in daemon.failure
        assert daemon.unready_reason() == daemon.failure
        await app.close()
