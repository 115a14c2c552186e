"""The ceiling: raw pub/sub from Python with each broker's asyncio client, one broker message per event.

One module per broker (raw_redis, raw_amqp, raw_nats; a worker imports only its own), each with `publish` and
`subscribe`. Every publisher batches as far as its client library lets it, every subscriber reads the way
syncar's own backend for that broker does, and the bodies are exactly feathers-sync's. This module holds what
they share: the pacing loop and what a subscriber does with each body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bench.payload import Events, now_us, stamp_of
from bench.tally import Pacer, Spec, Tally

Send = Callable[[list[bytes]], Awaitable[None]]
CHECK_EVERY = 0.02


async def pace(spec: Spec, send: Send) -> dict[str, Any]:
    events, pacer = Events(spec.size), Pacer(spec)
    while (step := pacer.next()) is not None:
        count, pause = step
        if not count:
            await asyncio.sleep(pause)
            continue
        t, first = now_us(), pacer.sent
        await send([events.body(n, t) for n in range(first, first + count)])
        pacer.sent_now(count)
    return pacer.finish()


async def until_finished(tally: Tally) -> None:
    # The end depends on the clock and on the flow file the publisher writes: it can only be polled.
    while not tally.finished():  # noqa: ASYNC110
        await asyncio.sleep(CHECK_EVERY)


def on_body(tally: Tally) -> Callable[[bytes], None]:
    """What a subscriber does with each body: count it (`Tally.one`, as cheap as a syncar subscriber's count of a
    read), and at a fixed rate first read its send time."""
    if not tally.latency:
        return lambda body: tally.one()

    def take(body: bytes) -> None:
        tally.stamp(stamp_of(body))
        tally.one()

    return take
