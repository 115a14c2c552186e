"""Limits that stop one client from hurting the others: publish rate, connections, directory permissions."""

from __future__ import annotations

import stat
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
