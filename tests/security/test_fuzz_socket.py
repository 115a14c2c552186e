"""Fuzzing over the socket: 10,000 random and mutated frames against a live daemon. The daemon stays up, a
bystander keeps receiving, memory stays bounded. The figures printed here go in docs/security.md."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import orjson

from sidecar import protocol
from sidecar.errors import FrameError
from sidecar.framing import FrameDecoder, Oversized
from tests.utils import RawClient, SpawnedDaemon, publish_frame

FRAMES = 10_000
ATTACKERS = 20
SEED = 20261125
MAX_FRAME_BYTES = 65536

VALID: list[dict[str, object]] = [
    {"type": "publish", "path": "messages", "event": "created", "data": {"text": "hi"}, "id": "a", "ack": True},
    {
        "type": "hello",
        "version": 1,
        "client": "x",
        "subscribe": [{"path": "m*", "event": "*"}],
        "resume": {"epoch": "e", "seq": 3},
    },
    {"type": "ping"},
]
JUNK = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b"\\",
    b"\x00",
    b"\xff",
    b"\xc3\x28",
    b"null",
    b"1e999",
    b'"type"',
    b"-",
    b"9" * 400,
    b"\t",
    b"\r",
    b"\x1b[2J",
    "é🚀".encode(),
]


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
                del line[position : position + rng.randint(1, 5)]
            elif operation < 0.8:
                line[position:position] = rng.choice(JUNK)
            elif line:
                line[min(position, len(line) - 1)] = rng.getrandbits(8)
    return bytes(line).replace(b"\n", b"")


def owed(line: bytes | Oversized) -> str | None:
    """The answer syncar owes a frame sent after the hello: `error`, `ack`, `pong`, or none (a publish without ack)."""
    if type(line) is Oversized:
        return "error"
    try:
        publish = protocol.fast_publish(line)
        if publish is None:
            frame = protocol.decode(line)
            if frame["type"] == "ping":
                return "pong"
            if frame["type"] != "publish":  # a second hello, or a type syncar does not know
                return "error"
            publish = protocol.parse_publish(frame)
    except FrameError:
        return "error"
    return "ack" if publish.ack and publish.id else None


async def attacker(sock: Path, rng: random.Random, count: int) -> tuple[Counter[str], Counter[str]]:
    """Send `count` fuzzed frames after a hello; return the answers owed (by the frames as syncar splits them) and
    the answers received, by type."""
    reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 24)
    drained = asyncio.create_task(reader.read())  # take whatever syncar answers, unread answers must not block it
    sent = b"".join(mutate(rng) + b"\n" for _ in range(count))
    writer.write(orjson.dumps({"type": "hello", "client": "fuzz", "subscribe": []}) + b"\n" + sent)
    writer.write_eof()
    await writer.drain()
    async with asyncio.timeout(60):
        answers = await drained
    writer.close()
    expected = Counter({"welcome": 1}) + Counter(filter(None, map(owed, FrameDecoder(MAX_FRAME_BYTES).feed(sent))))
    received = Counter(orjson.loads(answer)["type"] for answer in answers.splitlines())
    return expected, received


async def test_fuzz_frames_over_the_socket(sock: Path) -> None:
    daemon = SpawnedDaemon(sock, "--max-frame-bytes", str(MAX_FRAME_BYTES))
    try:
        await daemon.ready()
        bystander = await RawClient.connect(sock, {"subscribe": ["heartbeat"]})
        pinger = await RawClient.connect(sock, {})
        baseline = daemon.rss_bytes()
        rng = random.Random(SEED)
        started = time.monotonic()
        attack = asyncio.gather(
            *(attacker(sock, random.Random(rng.random()), FRAMES // ATTACKERS) for _ in range(ATTACKERS))
        )
        heartbeats = 0
        while not attack.done():
            await pinger.send(publish_frame("heartbeat", "beat", heartbeats))
            assert (await bystander.frame_of("event"))["data"] == heartbeats  # the bystander never misses one
            heartbeats += 1
        tallies = await attack
        elapsed = time.monotonic() - started
        peak = daemon.rss_bytes()
        assert daemon.process.poll() is None, "the daemon died under fuzzing"
        # Every frame answered as owed, on every connection: one error per unusable frame, an ack per publish that
        # asked, a pong per ping, and nothing else.
        for expected, received in tallies:
            assert received == expected
        answers = sum((received for _, received in tallies), Counter[str]())
        assert peak - baseline < 64 * 1024 * 1024, f"RSS grew {(peak - baseline) / 1e6:.1f} MB"
        await pinger.send(publish_frame("heartbeat", "beat", "last"))
        assert (await bystander.frame_of("event"))["data"] == "last"
        print(
            f"\nfuzz: {FRAMES} frames from {ATTACKERS} connections in {elapsed:.1f}s, answers {dict(answers)}, "
            f"{heartbeats} heartbeats all delivered, RSS {baseline / 1e6:.1f} -> {peak / 1e6:.1f} MB"
        )
        await bystander.close()
        await pinger.close()
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
