"""Fuzzing over the socket: 10,000 random and mutated frames against a live daemon. The daemon stays up, a
bystander keeps receiving, memory stays bounded. The figures printed here go in docs/security.md."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import orjson

from tests.utils import RawClient, SpawnedDaemon, publish_frame

FRAMES = 10_000
ATTACKERS = 20
SEED = 20261125

VALID = [
    {"type": "publish", "path": "messages", "event": "created", "data": {"text": "hi"}, "id": "a", "ack": True},
    {"type": "hello", "version": 1, "client": "x", "subscribe": [{"path": "m*", "event": "*"}],
     "resume": {"epoch": "e", "seq": 3}},
    {"type": "ping"},
]
JUNK = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\", b"\x00", b"\xff", b"\xc3\x28", b"null", b"1e999",
        b'"type"', b"-", b"9" * 400, b"\t", b"\r", b"\x1b[2J", "é🚀".encode()]


def mutate(rng: random.Random) -> bytes:
    """A frame that is valid, mutated, or pure noise; never containing a newline (that would be two frames)."""
    choice = rng.random()
    if choice < 0.2:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))).replace(b"\n", b"")
    frame = dict(rng.choice(VALID))
    if choice < 0.5:  # wrong types in known fields
        field = rng.choice([*frame.keys(), "path", "event", "data", "ack", "id", "version", "subscribe"])
        frame[field] = rng.choice([None, 7, -1, 1.5, True, "", "x" * rng.randint(0, 300), [], {}, [1, [2]]])
    line = bytearray(orjson.dumps(frame))
    if choice >= 0.5:  # byte-level damage to valid JSON
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(line) + 1)
            operation = rng.random()
            if operation < 0.4 and line:
                del line[position:position + rng.randint(1, 5)]
            elif operation < 0.8:
                line[position:position] = rng.choice(JUNK)
            elif line:
                line[min(position, len(line) - 1)] = rng.getrandbits(8)
    return bytes(line).replace(b"\n", b"")


async def attacker(sock: Path, rng: random.Random, count: int) -> int:
    reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 24)
    drained = asyncio.create_task(reader.read())  # take whatever syncar answers, unread answers must not block it
    for _ in range(count):
        writer.write(mutate(rng) + b"\n")
    writer.write_eof()
    await writer.drain()
    async with asyncio.timeout(60):
        answers = await drained
    writer.close()
    return answers.count(b"\n")


async def test_fuzz_frames_over_the_socket(sock: Path) -> None:
    daemon = SpawnedDaemon(sock, "--max-frame-bytes", "65536")
    try:
        await daemon.ready()
        bystander = await RawClient.connect(sock, {"subscribe": ["heartbeat"]})
        pinger = await RawClient.connect(sock, {})
        baseline = daemon.rss_bytes()
        rng = random.Random(SEED)
        started = time.monotonic()
        attack = asyncio.gather(*(attacker(sock, random.Random(rng.random()), FRAMES // ATTACKERS)
                                  for _ in range(ATTACKERS)))
        heartbeats = 0
        while not attack.done():
            await pinger.send(publish_frame("heartbeat", "beat", heartbeats))
            assert (await bystander.frame_of("event"))["data"] == heartbeats  # the bystander never misses one
            heartbeats += 1
        answers = sum(await attack)
        elapsed = time.monotonic() - started
        peak = daemon.rss_bytes()
        assert daemon.process.poll() is None, "the daemon died under fuzzing"
        assert answers >= FRAMES * 0.5, "most fuzzed frames should get an answer (error, ack, welcome, pong)"
        assert peak - baseline < 64 * 1024 * 1024, f"RSS grew {(peak - baseline) / 1e6:.1f} MB"
        await pinger.send(publish_frame("heartbeat", "beat", "last"))
        assert (await bystander.frame_of("event"))["data"] == "last"
        print(f"\nfuzz: {FRAMES} frames from {ATTACKERS} connections in {elapsed:.1f}s, {answers} answers, "
              f"{heartbeats} heartbeats all delivered, RSS {baseline / 1e6:.1f} -> {peak / 1e6:.1f} MB")
        await bystander.close()
        await pinger.close()
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
