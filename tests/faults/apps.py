"""The apps of the fault tests, as asyncio tasks in the test process: a publisher, receivers and status watchers.

They talk to real daemons through `sidecar.client.Client`, as an application
would, and keep a record of what happened and when (loop time), which
`report.py` turns into counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from sidecar.client import Client, ClientError, PublishRefused
from tests.utils import REPO

PATH, EVENT = "stream", "tick"
#: The apps' reconnect back-off: shorter than the client's default cap (5 s), so a test spends its time on faults.
BACKOFF = (0.05, 1.0)
#: Publishes the publisher keeps while its daemon is away (the client's default is 10,000).
MAX_PENDING = 100_000
#: Events published per pacing step; 10 every 10 ms is 1,000 events/s.
STEP_EVENTS = 10
#: Connection attempts of a status watcher: at its retry interval, longer than any test.
MAX_WATCH_ATTEMPTS = 10_000


def ranges(numbers: set[int], most: int = 3) -> str:
    """`numbers` as ranges ("1000-2569, 2600"), the first `most` of them."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    shown = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans[:most])
    return shown + (f" and {len(spans) - most} more ranges" if len(spans) > most else "")


def now() -> float:
    return asyncio.get_running_loop().time()


class Publisher:
    """Publishes `n` = 0, 1, 2 ... as event id `p-<n>` at a fixed rate, each with `ack=True`, and records the acks."""

    def __init__(self, socket: Path, rate: float = 1000.0) -> None:
        self.client = Client(socket, name="publisher", subscribe=[], backoff=BACKOFF, max_pending=MAX_PENDING)
        self.rate = rate
        self.published: dict[int, float] = {}  # n -> loop time of the publish call
        self.acked: dict[int, float] = {}
        self.refused: dict[int, str] = {}  # n -> nack code
        self._inflight: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def count(self) -> int:
        return len(self.published)

    async def start(self) -> None:
        await self.client.connect()
        self._task = asyncio.create_task(self._run(), name="publisher")

    async def _one(self, n: int) -> None:
        try:
            # No timeout: the client re-sends across every fault until the ack comes, and the table counts when.
            await self.client.publish(PATH, EVENT, n, id=f"p-{n}", ack=True, timeout=None)
        except PublishRefused as exc:
            self.refused[n] = exc.code
        except ClientError:
            pass  # closed before an ack: counted as unacked
        else:
            self.acked[n] = now()

    async def _run(self) -> None:
        start = now()
        n = 0
        while not self._stop.is_set():
            for _ in range(STEP_EVENTS):
                self.published[n] = now()
                task = asyncio.create_task(self._one(n))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                n += 1
            # Pacing to the target rate: the next step is due at a fixed point in time, so delays do not add up.
            delay = start + n / self.rate - now()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)

    def unacked_ids(self) -> str:
        """The publishes neither acked nor nacked, as ranges ("2510-2519, 3020-3029")."""
        return ranges(set(self.published) - set(self.acked) - set(self.refused))

    async def stop(self, ack_timeout: float) -> int:
        """Stop publishing; wait up to `ack_timeout` for outstanding acks. Returns how many never came."""
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=ack_timeout)
        return len(self._inflight)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=1.0)


class Receiver:
    """An app that records every event it gets: (n, loop time); it can stop reading for a while."""

    def __init__(self, name: str, socket: Path, *, max_events: int = 10_000) -> None:
        self.name = name
        self.client = Client(socket, name=name, subscribe=[PATH], backoff=BACKOFF, max_events=max_events)
        self.records: list[tuple[int, float]] = []
        self.origins: set[str | None] = set()
        self.reading = asyncio.Event()
        self.reading.set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.connect()
        self._task = asyncio.create_task(self._run(), name=f"receiver-{self.name}")

    async def _run(self) -> None:
        async for event in self.client:
            await self.reading.wait()
            self.records.append((event.data, now()))
            self.origins.add(event.origin)

    def received(self) -> set[int]:
        return {n for n, _ in self.records}

    @property
    def gaps(self) -> int:
        """Resumes the daemon could not serve (`resume_gap`): the app was told it missed events."""
        return self.client.gaps

    async def finish(self) -> None:
        """Nothing to collect: the records are in this process."""

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()


class ExternalReceiver:
    """A receiving app in a process of its own (tests/faults/slow_app.py), which stalls its whole event loop."""

    def __init__(self, name: str, socket: Path, directory: Path, *, stall_after: int, stall_seconds: float) -> None:
        self.name = name
        self.out = directory / f"{name}.records"
        self.out.touch()
        self._args = [
            sys.executable,
            "-m",
            "tests.faults.slow_app",
            str(socket),
            str(self.out),
            str(stall_after),
            str(stall_seconds),
        ]
        self._records: list[tuple[int, float]] = []
        self._offset = 0
        self.gaps = 0
        self.stalled: list[float] = []
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = process = await asyncio.create_subprocess_exec(*self._args, stdout=subprocess.PIPE, cwd=REPO)
        assert process.stdout is not None
        async with asyncio.timeout(15):
            line = await process.stdout.readline()
        assert line == b"ready\n", f"slow app did not start: {line!r}"

    @property
    def records(self) -> list[tuple[int, float]]:
        """What the app has written so far (whole lines only)."""
        with self.out.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(whole)
        for line in whole.splitlines():
            n, t = line.split()
            self._records.append((int(n), float(t)))
        return self._records

    def received(self) -> set[int]:
        return {n for n, _ in self.records}

    def caught_up(self, publisher: Publisher, since: float) -> float | None:
        """Seconds after `since` when the app had every acked event published before `since`, or None if never."""
        missing = {n for n in publisher.acked if publisher.published[n] <= since}
        for n, t in self.records:
            missing.discard(n)
            if not missing:
                return max(t - since, 0.0)
        return None

    async def finish(self) -> None:
        """Stop the app and read what it says about resume gaps and its stall."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            out, _ = await process.communicate()
        summary = orjson.loads(out.splitlines()[-1])
        self.gaps, self.stalled = summary["gaps"], summary["stalled"]

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.communicate()


@dataclass
class StatusWatch:
    """A publish-only connection that records the `status` and `error` frames a daemon sends its apps.

    It reconnects when the daemon restarts, so it sees both runs. `sidecar.client.Client` keeps only the
    latest broker state; this keeps every frame, with its loop time.
    """

    socket: Path
    frames: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        connected = asyncio.Event()
        self._task = asyncio.create_task(self._run(connected), name="status-watch")
        async with asyncio.timeout(10):
            await connected.wait()

    async def _run(self, connected: asyncio.Event) -> None:
        hello = orjson.dumps({"type": "hello", "client": "status-watch", "subscribe": []}) + b"\n"
        for _ in range(MAX_WATCH_ATTEMPTS):  # close() normally ends it long before
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket)
            except OSError:
                await asyncio.sleep(BACKOFF[0])  # the daemon is restarting: retry soon, as an app would
                continue
            try:
                writer.write(hello)
                while line := await reader.readline():
                    frame = orjson.loads(line)
                    if frame.get("type") == "welcome":
                        connected.set()
                    if frame.get("type") in ("status", "error", "welcome"):
                        self.frames.append((now(), frame))
            except OSError:
                pass
            finally:
                writer.close()

    def broker_states(self) -> list[str]:
        """The `broker` field of each status frame, in order ("down", "up", ...)."""
        return [str(f["broker"]) for _, f in self.frames if f.get("type") == "status"]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


async def scrape(port: int) -> dict[str, float]:
    """The daemon's /metrics as {'name{labels}': value}, e.g. 'syncar_events_dropped_total{reason="echo"}'."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = await reader.read()
        writer.close()
    samples: dict[str, float] = {}
    for line in body.decode().split("\r\n\r\n", 1)[1].splitlines():
        found = _SAMPLE.match(line)
        if found:
            name, labels, value = found.groups()
            samples[f"{name}{{{labels}}}" if labels else name] = float(value)
    return samples


def dropped(samples: dict[str, float], ignore: Sequence[str] = ("echo",)) -> dict[str, int]:
    """syncar_events_dropped_total by reason, without the zero ones and the reasons that are not losses."""
    found = {}
    for key, value in samples.items():
        match = re.fullmatch(r'syncar_events_dropped_total\{reason="([^"]+)"\}', key)
        if match and value and match.group(1) not in ignore:
            found[match.group(1)] = int(value)
    return found
