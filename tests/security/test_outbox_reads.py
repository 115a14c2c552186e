"""An event waiting in the outbox holds its own bytes, never the app's read it came in (review21b, finding 2).

A publish's `data` and `context` are views into the app's whole read (up to 256 KiB). The feathers-sync codec packs
them again when the broker is back, so the relay keeps them: as views, a tiny event kept its whole read. An app whose
every write is one small publish and then 200 KiB of a line it never finishes made 200 tiny events hold 41 MiB of a
daemon whose outbox counted ~150 KB (--outbox-bytes scales that to ~26 GiB). The relay keeps copies of their own.
The syncar codec, which packs the events' encoded parts and lets go of `data` and `context`, is the control.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from sidecar.daemon import Daemon
from tests.brokers import free_port
from tests.conftest import Connect
from tests.utils import metric, run_daemon, wait_for

MiB = 1024 * 1024
ROUNDS = 200
TAIL = 200 * 1024
#: What the outbox may hold of 200 tiny events, and what else the daemon and the test allocate meanwhile, with room
#: to spare: far below the 40 MiB that 200 reads of 200 KiB are.
BOUND = 8 * MiB


def published(daemon: Daemon) -> float:
    return metric(daemon.metrics, "syncar_events_published_total")


@pytest.mark.usefixtures("traced")
@pytest.mark.parametrize("codec", ["syncar", "feathers-sync"])
async def test_an_event_in_the_outbox_does_not_keep_the_read_it_came_in(
    sock: Path, connect: Connect, codec: str
) -> None:
    # A broker that is not there: the daemon starts without it and keeps publishes in the outbox.
    async with run_daemon(
        sock, backend=f"redis://127.0.0.1:{free_port()}", codec=codec, replay_events=0, outbox_bytes=64 * MiB
    ) as daemon:
        app = await connect(sock, {})
        assert app.welcome["broker"] == "down"
        before = tracemalloc.get_traced_memory()[0]
        for count in range(1, ROUNDS + 1):
            # The end of the last round's long line (an invalid_json), a small publish, the start of a long line.
            await app.send(b'\n{"type":"publish","path":"p","event":"e","data":%d}\n' % count + b"x" * TAIL)
            # Each round read before the next is sent: its publish is decoded from a read of its own.
            await wait_for(lambda: published(daemon) == count, what=f"publish {count}")  # noqa: B023 - awaited at once
        await app.send(b'\n{"type":"ping"}\n')
        await app.frame_of("pong")
        grown = tracemalloc.get_traced_memory()[0] - before
        assert metric(daemon.metrics, "syncar_outbox_events") == ROUNDS
        print(f"{codec}: {grown / MiB:.2f} MiB traced growth, {metric(daemon.metrics, 'syncar_outbox_bytes'):.0f} B")
        assert grown < BOUND, f"{grown / MiB:.1f} MiB kept for {ROUNDS} tiny events in the outbox"
