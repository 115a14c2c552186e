"""The ceiling on Redis: redis-py's asyncio client; a pipeline of PUBLISHes per batch, one round trip each.

The subscriber reads one connection in subscribed mode reply by reply with redis-py's `read_response()`, with no
timeout, as an app would (`PubSub.listen()` does), and as backends/redis.py did until it read that connection's bytes
as they arrive (backends/redis_internals.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from bench.raw_common import on_body, pace, until_finished
from bench.tally import Spec, Tally


async def publish(spec: Spec, ready: Callable[[], None]) -> dict[str, Any]:
    client = Redis.from_url(spec.target)
    await client.ping()
    ready()

    async def send(bodies: list[bytes]) -> None:
        if len(bodies) == 1:
            await client.publish(spec.key, bodies[0])
            return
        async with client.pipeline(transaction=False) as pipe:
            for body in bodies:
                pipe.publish(spec.key, body)
            await pipe.execute()

    result = await pace(spec, send)
    await client.aclose()
    return result


async def subscribe(spec: Spec, ready: Callable[[], None]) -> dict[str, Any]:
    parts = urlsplit(spec.target)
    # One connection in subscribed mode, read reply by reply through redis-py.
    conn = Connection(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, protocol=2)
    await conn.connect()  # type: ignore[no-untyped-call]
    await conn.send_command("SUBSCRIBE", spec.key)
    await conn.read_response()
    tally = Tally(spec)
    take = on_body(tally)

    async def read() -> None:
        # Without a timeout, as redis-py's PubSub.listen() reads: one per reply was an asyncio timeout a message.
        while True:
            response = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
            if isinstance(response, list) and len(response) == 3 and response[0] == b"message":
                take(response[2])

    reader = asyncio.ensure_future(read())
    ready()
    await until_finished(tally)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await conn.disconnect()
    return tally.result()
