"""Limits that stop one client from hurting the others: publish rate, connections, directory permissions."""

from __future__ import annotations

import stat
import sys
import uuid
from pathlib import Path

from tests.conftest import Connect
from tests.utils import publish_frame, run_daemon


async def test_publish_rate_limit_refuses_the_excess_with_a_clear_frame(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock, client_rate=1.0, client_burst=5) as daemon:
        flooder = await connect(sock, {})
        polite = await connect(sock, {})
        listener = await connect(sock, {})
        await flooder.send(b"".join(
            b'{"type":"publish","path":"p","event":"e","data":%d,"id":"f%d","ack":true}\n' % (i, i) for i in range(20)))
        answers = [await flooder.frame() for _ in range(20)]
        refused = [a for a in answers if a["type"] == "nack"]
        assert len(refused) >= 14  # the burst of 5, plus what one token per second refilled meanwhile
        assert all(a["code"] == "rate_limited" for a in refused)
        assert daemon.metrics.dropped.labels("rate_limited")._value.get() == len(refused)
        # Others are not limited by the flooder's bucket.
        await polite.send(publish_frame(data="polite"))
        while (await listener.frame_of("event"))["data"] != "polite":
            pass


async def test_socket_directory_is_created_closed_to_others(sock_dir: Path) -> None:
    sock = sock_dir / "nested" / "syncar.sock"
    async with run_daemon(sock):
        assert stat.S_IMODE(sock.parent.stat().st_mode) & 0o007 == 0


async def test_paths_and_event_names_are_shared_but_never_interned(sock: Path, connect: Connect) -> None:
    """Replay entries share their paths and event names (the memory win of 4473a54), but not through sys.intern:
    on Python 3.12+ interned strings are never freed, so an app publishing unique paths grew the daemon without
    bound (42 to 222 MB over 40,000 unique 4 KB paths)."""
    async with run_daemon(sock) as daemon:
        publisher = await connect(sock, {})
        listener = await connect(sock, {})
        unique = f"path-{uuid.uuid4().hex}"
        for path in ("messages", "messages", unique):
            await publisher.send(publish_frame(path, f"{path}-event"))
            await listener.frame_of("event")
        first, second, third = daemon.relay._replay.after(0) or []
        assert first.path is second.path and first.event is second.event
        # Not in the interpreter's table: interning an equal string gives that string, not the entry's.
        assert sys.intern("".join(["path-", unique[5:]])) is not third.path
        assert sys.intern("".join(["path-", unique[5:], "-event"])) is not third.event
