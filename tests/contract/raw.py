"""Raw broker clients, to see exactly what syncar puts on the wire and to put things there behind its back."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tests.brokers import BrokerServer
from tests.utils import TIMEOUT

if TYPE_CHECKING:
    import nats.aio.client
    import nats.aio.msg


@contextlib.asynccontextmanager
async def raw_subscriber(server: BrokerServer, key: str) -> AsyncIterator[asyncio.Queue[bytes]]:
    """Bodies published on `key`, as a plain client of that broker receives them."""
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    if server.name == "redis":
        import redis.asyncio

        client = redis.asyncio.from_url(server.uri)
        pubsub = client.pubsub()
        await pubsub.subscribe(key)
        subscribed = asyncio.Event()

        async def pump() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    await inbox.put(message["data"])
                elif message["type"] == "subscribe":
                    subscribed.set()

        task = asyncio.create_task(pump())
        try:
            # subscribe() only sent the command: Redis has it once it says so (a publish before then is not ours).
            async with asyncio.timeout(TIMEOUT):
                await subscribed.wait()
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

        nats_client = await nats.connect(server.uri)

        async def on_msg(message: nats.aio.msg.Msg) -> None:
            await inbox.put(message.data)

        await nats_client.subscribe(key, cb=on_msg)
        await _processed(nats_client)
        try:
            yield inbox
        finally:
            await nats_client.close()


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

        nats_client = await nats.connect(server.uri)
        await nats_client.publish(key, body)
        await _processed(nats_client)
        await nats_client.close()


async def _processed(client: nats.aio.client.Client) -> None:
    """Return once the NATS server has processed every command `client` was given so far.

    Not flush(): nats-py writes flush()'s PING straight to the socket, ahead of the SUB or PUB its flusher task has
    yet to write, so the PONG proves nothing about them (a subscriber whose SUB the server had not read yet missed the
    daemon's publish: test_wire failed 1 in 25 runs at load 14, and every run with nats-py's flusher held 0.3 s).
    A message to ourselves on a subject of our own, queued behind them, comes back only after the server read them.
    """
    back = asyncio.Event()

    async def on_probe(_: nats.aio.msg.Msg) -> None:
        back.set()

    probe = await client.subscribe(f"syncar-test-probe.{uuid.uuid4().hex}", cb=on_probe)
    await client.publish(probe.subject, b"")
    async with asyncio.timeout(TIMEOUT):
        await back.wait()
    await probe.unsubscribe()
