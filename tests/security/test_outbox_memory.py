"""--outbox-bytes bounds memory: tiny publishes piling up while the broker is away must not take several times it."""

from __future__ import annotations

from pathlib import Path

from tests.brokers import free_port
from tests.utils import RawClient, SpawnedDaemon

MiB = 1024 * 1024
OUTBOX_BYTES = 16 * MiB
ROUND = 2000  # publishes sent at once, then a ping to learn what became of them
MAX_ROUNDS = 500  # 1,000,000 publishes: far more than the outbox holds whatever it counts


async def test_tiny_publishes_stay_within_the_outbox_bound(sock: Path) -> None:
    # A broker that is not there: the daemon starts without it and keeps publishes in the outbox.
    daemon = SpawnedDaemon(
        sock,
        "--backend",
        f"redis://127.0.0.1:{free_port()}",
        "--outbox-bytes",
        str(OUTBOX_BYTES),
        "--replay-events",
        "0",
        "--shutdown-timeout",
        "1",
    )
    try:
        await daemon.ready()
        publisher = await RawClient.connect(sock, {})
        assert publisher.welcome["broker"] == "down"
        before = daemon.rss_bytes()
        queued = 0
        for _ in range(MAX_ROUNDS):
            await publisher.send(
                b"".join(b'{"type":"publish","path":"p","event":"e","data":%d}\n' % i for i in range(ROUND))
                + b'{"type":"ping"}\n'
            )
            answers = []
            while (frame := await publisher.frame())["type"] != "pong":
                answers.append(frame)
            if answers:
                assert {(a["type"], a["code"]) for a in answers} == {("error", "outbox_full")}, answers[:3]
                queued += ROUND - len(answers)
                break
            queued += ROUND
        else:
            raise AssertionError(f"the outbox took {queued} publishes and never said it was full")
        grown = daemon.rss_bytes() - before
        print(
            f"outbox full after {queued} publishes; RSS grew {grown / MiB:.1f} MiB for --outbox-bytes "
            f"{OUTBOX_BYTES / MiB:.0f} MiB"
        )
        assert grown < 2 * OUTBOX_BYTES, f"{grown / MiB:.0f} MiB for {queued} queued publishes"
        await publisher.close()
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
