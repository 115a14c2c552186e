"""The ceiling on RabbitMQ: aio-pika, publishing without confirms back to back (the fastest it goes), to
feathers-sync's exchange shape; an exclusive queue bound to it, consumed without acks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aio_pika

from bench.raw_common import on_body, pace, until_finished
from bench.tally import Spec, Tally


async def _exchange(spec: Spec) -> tuple[Any, Any, Any]:
    connection = await aio_pika.connect(spec.target)
    channel = await connection.channel(publisher_confirms=False)
    # feathers-sync's exchange: a non-durable fanout named by the key.
    exchange = await channel.declare_exchange(spec.key, aio_pika.ExchangeType.FANOUT, durable=False)
    return connection, channel, exchange


async def publish(spec: Spec, ready: Callable[[], None]) -> dict[str, Any]:
    connection, _, exchange = await _exchange(spec)
    ready()

    async def send(bodies: list[bytes]) -> None:
        for body in bodies:
            await exchange.publish(aio_pika.Message(body), routing_key="")

    result = await pace(spec, send)
    await connection.close()
    return result


async def subscribe(spec: Spec, ready: Callable[[], None]) -> dict[str, Any]:
    connection, channel, exchange = await _exchange(spec)
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    await queue.bind(exchange)
    tally = Tally(spec)
    take = on_body(tally)

    async def on_message(message: Any) -> None:
        take(message.body)

    await queue.consume(on_message, no_ack=True)
    ready()
    await until_finished(tally)
    await connection.close()
    return tally.result()
