"""Raw broker clients, to see exactly what syncar puts on the wire and to put things there behind its back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.brokers import BrokerServer


@contextlib.asynccontextmanager
async def raw_subscriber(server: BrokerServer, key: str) -> AsyncIterator[asyncio.Queue[bytes]]:
    """Bodies published on `key`, as a plain client of that broker receives them."""
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    if server.name == "redis":
        import redis.asyncio

        client = redis.asyncio.from_url(server.uri)
        pubsub = client.pubsub()
        await pubsub.subscribe(key)

        async def pump() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    await inbox.put(message["data"])

        task = asyncio.create_task(pump())
        try:
            yield inbox
        finally:
            task.cancel()
            await pubsub.aclose()
            await client.aclose()
    elif server.name == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(server.uri)
        channel = await connection.channel()
        # Declared exactly as feathers-sync 3.x does; a mismatch would be a PRECONDITION_FAILED here.
        exchange = await channel.declare_exchange(key, aio_pika.ExchangeType.FANOUT, durable=False)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchange, "queue-binding")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await inbox.put(message.body)

        await queue.consume(on_message, no_ack=True)
        try:
            yield inbox
        finally:
            await connection.close()
    else:
        import nats

        client = await nats.connect(server.uri)

        async def on_msg(message: nats.aio.msg.Msg) -> None:
            await inbox.put(message.data)

        await client.subscribe(key, cb=on_msg)
        await client.flush()
        try:
            yield inbox
        finally:
            await client.close()


async def raw_publish(server: BrokerServer, key: str, body: bytes) -> None:
    """Publish `body` on `key` as a foreign client would."""
    if server.name == "redis":
        import redis.asyncio

        client = redis.asyncio.from_url(server.uri)
        await client.publish(key, body)
        await client.aclose()
    elif server.name == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(server.uri)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(key, aio_pika.ExchangeType.FANOUT, durable=False)
        await exchange.publish(aio_pika.Message(body), routing_key="")
        await connection.close()
    else:
        import nats

        client = await nats.connect(server.uri)
        await client.publish(key, body)
        await client.flush()
        await client.close()
