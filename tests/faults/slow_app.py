"""An app whose process stops reading for a while: `python -m tests.faults.slow_app SOCKET OUT STALL_AFTER STALL_S`.

It receives the stream with `sidecar.client.Client` and appends `n time` to
OUT for each event (time.monotonic, the clock of the test's event loop too).
After its STALL_AFTER-th event it blocks its own event loop for STALL_S
seconds, as a CPU-bound handler or a long pause would, so nothing reads its
socket and the daemon's slow-client policy has to act; then it carries on,
and the client reconnects and resumes. It prints `ready` once connected and,
on SIGTERM, one JSON line: {"gaps": resume gaps the client was told of,
"stalled": [start, end]}.

It runs in a process of its own because a stall in the test's process would
stall every other app and the publisher with it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import orjson

from sidecar.client import Client

BACKOFF = (0.05, 1.0)


async def main(socket: Path, out: Path, stall_after: int, stall_seconds: float) -> None:
    client = Client(socket, name="slow", subscribe=["stream"], backoff=BACKOFF)
    stalled: list[float] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await client.connect()
    print("ready", flush=True)

    async def receive() -> None:
        with out.open("a", buffering=1) as records:
            count = 0
            async for event in client:
                records.write(f"{event.data} {time.monotonic()}\n")
                count += 1
                if count == stall_after:
                    stalled.append(time.monotonic())
                    time.sleep(stall_seconds)  # noqa: ASYNC251 - the point: this app blocks its loop and reads nothing
                    stalled.append(time.monotonic())

    receiving = asyncio.create_task(receive())
    await stop.wait()
    receiving.cancel()
    await client.close()
    print(orjson.dumps({"gaps": client.gaps, "stalled": stalled}).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
