"""Limits that stop one client from hurting the others: publish rate, connections, directory permissions."""

from __future__ import annotations

import asyncio
import stat
import sys
import time
import uuid
from pathlib import Path

from sidecar.config import Settings
from sidecar.protocol import MAX_PATTERN_LENGTH, MAX_WILDCARD_PATTERNS
from tests.conftest import Connect
from tests.utils import SpawnedDaemon, publish_frame, run_daemon


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


async def test_the_largest_hello_and_unique_paths_do_not_delay_another_app(sock: Path, connect: Connect) -> None:
    """One app subscribes with the most patterns allowed, as costly as they may be, while another publishes
    thousands of events with paths never seen before: the daemon must not spend much more on them than without
    that app, and a third app's pings and events must not wait on it. Before, every pattern was a regex tried on
    every new path (one 1 MB hello made other apps wait 5.5 s)."""
    daemon = SpawnedDaemon(sock)
    try:
        await daemon.ready()
        victim = await connect(sock, {"subscribe": ["heartbeat"]})
        heart = await connect(sock, {"subscribe": []})
        flood = await connect(sock, {"subscribe": []})
        pad = b"x" * 40

        async def publish_unique_paths(first: int) -> None:
            for start in range(first, first + 30_000, 500):
                await flood.send(b"".join(b'{"type":"publish","path":"%02d%s%d","event":"e"}\n' % (i % 16, pad, i)
                                          for i in range(start, start + 500)))
            await flood.send({"type": "ping"})
            await flood.frame_of("pong", timeout=120)  # all of them handled

        started = daemon.cpu_seconds()
        await publish_unique_paths(0)
        without = daemon.cpu_seconds() - started
        most = Settings.model_fields["max_patterns"].default
        # Wildcards that are slow to fail on the paths published, then exact names of the longest length.
        wildcards = [{"path": f"{i:02d}*{'x*' * 120}z", "event": "*"} for i in range(MAX_WILDCARD_PATTERNS)]
        exact = [{"path": f"{i:04d}".ljust(MAX_PATTERN_LENGTH, "p"), "event": f"{i:04d}".ljust(MAX_PATTERN_LENGTH, "e")}
                 for i in range(most - len(wildcards))]
        await connect(sock, {"subscribe": wildcards + exact})  # it receives none of these events
        started = daemon.cpu_seconds()
        flooding = asyncio.create_task(publish_unique_paths(30_000))
        pings: list[float] = []
        events: list[float] = []
        while not flooding.done():
            sent = time.monotonic()
            await victim.send({"type": "ping"})
            await victim.frame_of("pong", timeout=120)
            pings.append(time.monotonic() - sent)
            sent = time.monotonic()
            await heart.send(publish_frame("heartbeat", "beat", len(events)))
            assert (await victim.frame_of("event", timeout=120))["data"] == len(events)
            events.append(time.monotonic() - sent)
        await flooding
        with_hello = daemon.cpu_seconds() - started
        print(f"\n30,000 unique paths: {without:.2f} s of daemon CPU; {with_hello:.2f} s with the largest hello "
              f"({most} patterns) connected, during which {len(pings)} pings took at most {max(pings) * 1000:.0f} ms "
              f"and {len(events)} events at most {max(events) * 1000:.0f} ms")
        assert with_hello < 3 * without + 0.3, "the patterns cost more than the events themselves"
        # A few milliseconds on a quiet machine: the bound leaves room for a busy one (before: over a second).
        assert max(pings) < 1 and max(events) < 1, (max(pings), max(events))
        assert await daemon.stop() == 0
    finally:
        daemon.kill()


async def test_long_unique_paths_do_not_stay_in_memory(sock: Path, connect: Connect) -> None:
    """A client's filter cache kept whole paths without a byte bound: 1,000 events with 1 MB paths took the daemon
    from 41 MB to 1 GB, and it stayed there."""
    daemon = SpawnedDaemon(sock)
    try:
        await daemon.ready()
        await connect(sock, {"subscribe": ["a*z"]})  # a wildcard, so its answers are cached; it matches none
        publisher = await connect(sock, {"subscribe": []})
        baseline = daemon.rss_bytes()
        for i in range(300):
            await publisher.send(b'{"type":"publish","path":"a%s%d","event":"e"}\n' % (b"x" * 1_000_000, i))
        await publisher.send({"type": "ping"})
        await publisher.frame_of("pong", timeout=60)
        growth = daemon.rss_bytes() - baseline
        print(f"\n300 events with 1 MB paths: RSS {baseline / 1e6:.0f} MB, then {growth / 1e6:.0f} MB more")
        # What is kept for them is the replay buffer (--replay-bytes, 16 MiB by default), and their paths.
        assert growth < 96 * 1024 * 1024, f"RSS grew {growth / 1e6:.0f} MB"
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
