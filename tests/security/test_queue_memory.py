"""What apps that have not read yet cost the daemon: the frames it sent them, once, however many apps wait for them."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson

from tests.utils import TIMEOUT, RawClient, SpawnedDaemon, publish_frame

MiB = 1024 * 1024
APPS = 3
EVENTS = 4000
ROUND = 500
DATA = "x" * 1200  # a frame of ~1.3 KB, what a Feathers event with a 256 B record makes


def stalled_app(sock: Path) -> socket.socket:
    """An app that says hello, reads its welcome and nothing after: what the daemon sends it waits in its queue."""
    app = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    app.settimeout(TIMEOUT)
    app.connect(str(sock))
    app.sendall(b'{"type":"hello"}\n')
    received = b""
    while b"\n" not in received:
        received += app.recv(1)
    assert orjson.loads(received)["type"] == "welcome"
    return app


async def test_apps_behind_share_the_frames_they_wait_for(sock: Path) -> None:
    """Three apps that do not read, 5 MB of events for each: their queues hold the same frames, written as they are.
    Each queue held a copy of its own when the frames of a turn of the loop were joined before the write (4 KiB and
    longer went as they were): 4 MB behind at full speed took a receiving daemon's peak 4 MiB up."""
    daemon = SpawnedDaemon(sock)  # the default queue (8 MiB) and replay buffer (10,000 events, 8 MiB)
    apps: list[socket.socket] = []
    try:
        await daemon.ready()
        apps = [stalled_app(sock) for _ in range(APPS)]
        publisher = await RawClient.connect(sock, {"subscribe": []})
        before = daemon.rss_bytes()
        line = orjson.dumps(publish_frame(data=[0, DATA])) + b"\n"
        for start in range(0, EVENTS, ROUND):
            await publisher.send(
                b"".join(orjson.dumps(publish_frame(data=[i, DATA])) + b"\n" for i in range(start, start + ROUND))
            )
            await publisher.send({"type": "ping"})
            await publisher.frame_of("pong")
        grown = daemon.rss_bytes() - before
        published = EVENTS * len(line)
        print(f"\n{published / MiB:.1f} MiB published to {APPS} apps that do not read: RSS grew {grown / MiB:.1f} MiB")
        # The replay buffer keeps each event's JSON and one frame of it waits for all three apps: 12.1 MiB, 2.5 times
        # what was published; with a copy per app, 22.2 MiB.
        assert grown < 3.5 * published, f"{grown / MiB:.1f} MiB for {published / MiB:.1f} MiB of events"
        await publisher.close()
        assert await daemon.stop() == 0
    finally:
        for app in apps:
            app.close()
        daemon.kill()
