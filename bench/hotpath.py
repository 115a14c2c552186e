"""`python -m bench.hotpath`: the daemon's CPU per event on its hot path, in one process, with the real code.

A Connection is fed publish frames (the benchmark's event, 256 B unless `--size` says otherwise, 256 per read) and
goes through `fast_publish`, its checks, `Relay.publish` with the local fan-out to one subscriber, the outbox and
`SyncarCodec.pack` to a fake broker; then `Relay.on_message` is fed those batches as another instance's (unpack,
de-duplication, fan-out).
No sockets, no broker: steadier than the end-to-end runs on a shared machine, so small changes show (what trace
context costs: docs/benchmarks.md#trace-context). Each measurement runs in a fresh process, alternated between
this checkout, this checkout with every publish traced, and `--base-root`'s, and the medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.payload import Events
from bench.plan import in_turn

REPO = Path(__file__).resolve().parent.parent
#: Reads of 256 publishes, and broker messages of 256 events, per sample.
READS = 8
EVENTS = 256
SAMPLES = 40


class _Transport:
    """What a Connection needs of its transport: it takes everything at once."""

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: list[bytes]) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def _measure(trace: bool, size: int) -> dict[str, float]:
    """ns of CPU per event, median of SAMPLES, publishing and receiving; sidecar comes from sys.path[0]."""
    # Imported here: from the checkout under measurement, which main() put first on sys.path.
    from backends.base import BackendState, Message  # noqa: PLC0415
    from sidecar.codec import SyncarCodec  # noqa: PLC0415
    from sidecar.connection import Connection, Limits  # noqa: PLC0415
    from sidecar.metrics import Metrics  # noqa: PLC0415
    from sidecar.outbox import Outbox  # noqa: PLC0415
    from sidecar.peers import PeerPolicy  # noqa: PLC0415
    from sidecar.relay import Relay  # noqa: PLC0415
    from sidecar.replay import ReplayBuffer  # noqa: PLC0415

    fakes = importlib.import_module("tests.unit.fakes")  # the measured checkout's fakes, for its Backend

    backend, metrics, codec = fakes.FakeBackend(), Metrics("fake", "syncar"), SyncarCodec("here")
    outbox = Outbox(backend, codec, "bench", 1 << 30, metrics)
    options: dict[str, Any] = {}
    if "gaps" in inspect.signature(Relay).parameters:  # checkouts from before the gap frames have none
        from sidecar.gaps import GapTracker  # noqa: PLC0415

        options["gaps"] = GapTracker()
    relay = Relay(
        "here",
        backend_name="fake",
        codec=codec,
        outbox=outbox,
        replay=ReplayBuffer(10_000, 16 << 20),
        metrics=metrics,
        id_key=b"bench",
        **options,
    )
    relay.on_backend_state(BackendState.CONNECTED)
    task = asyncio.create_task(outbox.run())
    subscriber = fakes.FakeSubscriber("listener")
    relay.join(subscriber, None)
    connection = Connection(
        relay, Limits(1 << 20, 1 << 30, 0.0, 1000, PeerPolicy((), ()), 1024), metrics, on_close=lambda _: None
    )
    connection.connection_made(_Transport())  # type: ignore[arg-type]
    chunk = Events(size, trace=trace).frames(0, EVENTS, 12345)
    connection.data_received(chunk)
    await outbox.drain()
    publish, receive = [], []
    for sample in range(SAMPLES):
        subscriber.frames.clear()
        backend.published.clear()
        started = time.process_time()
        for _ in range(READS):
            connection.data_received(chunk)
            await outbox.drain()
        publish.append((time.process_time() - started) / (READS * EVENTS) * 1e9)
        # The batches just sent, as another instance would send them: the receiving side's input, with ids new to
        # the receiver, so that nothing is dropped as a repeat.
        bodies = [
            body.replace(b'"origin":"here"', b'"origin":"there"').replace(b'"id":"', b'"id":"%d.' % sample)
            for call in backend.published
            for body in call
        ]
        subscriber.frames.clear()
        started = time.process_time()
        for one in bodies:
            await relay.on_message(Message(one))
        receive.append((time.process_time() - started) / (READS * EVENTS) * 1e9)
        if len(subscriber.frames) != READS * EVENTS:
            raise RuntimeError(f"{len(subscriber.frames)} of {READS * EVENTS} events received")
    task.cancel()
    return {"publish": statistics.median(publish), "receive": statistics.median(receive)}


def _run(root: Path, trace: bool, size: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.hotpath", "--measure", str(root), "--size", str(size)]
    argv += ["--trace"] if trace else []
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{root}: the measurement failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = orjson.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--base-root", type=Path, help="also measure this checkout's daemon code (before/after)")
    parser.add_argument("--rounds", type=int, default=7, help="alternated rounds (default 7)")
    parser.add_argument("--size", type=int, default=256, help="the payload's size in bytes (default 256)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one measurement, in a fresh process
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure is not None:
        sys.path.insert(0, str(args.measure.resolve()))
        print(orjson.dumps(asyncio.run(_measure(args.trace, args.size))).decode())
        return 0
    cases = [("after", REPO, False), ("after, every event traced", REPO, True)]
    if args.base_root is not None:
        cases.insert(0, ("before (--base-root)", args.base_root.resolve(), False))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in cases}
    for rnd in range(args.rounds):
        for name, root, trace in in_turn(cases, rnd):
            results[name].append(_run(root, trace, args.size))
    print(f"CPU per event, median of {args.rounds} alternated rounds (each the median of {SAMPLES} samples):")
    for name, runs in results.items():
        publish = statistics.median(r["publish"] for r in runs)
        receive = statistics.median(r["receive"] for r in runs)
        print(f"  {name:28} publish {publish / 1000:6.2f} us   receive {receive / 1000:6.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
