"""The ceiling on NATS: nats-py; PUBs buffered by the client and flushed once per batch; a plain subscription
with its pending limits off, so nothing is dropped as a slow consumer on the client side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nats

from bench.raw_common import on_body, pace, until_finished
from bench.tally import Spec, Tally


async def publish(spec: Spec, ready: Callable[[], None]) -> dict[str, Any]:
    client = await nats.connect(spec.target, allow_reconnect=False)
    ready()

    async def send(bodies: list[bytes]) -> None:
        for body in bodies:
            await client.publish(spec.key, body)
        await client.flush()

    result = await pace(spec, send)
    await client.close()
    return result


async def subscribe(spec: Spec, ready: Callable[[], None]) -> dict[str, Any]:
    client = await nats.connect(spec.target, allow_reconnect=False)
    tally = Tally(spec)
    take = on_body(tally)

    async def on_message(message: Any) -> None:
        take(message.data)

    await client.subscribe(spec.key, cb=on_message, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await client.flush()  # the server has the subscription once it answers the PING behind it
    ready()
    await until_finished(tally)
    await client.close()
    return tally.result()
