"""Redis backend on redis-py's asyncio client with hiredis: pub/sub in broadcast mode, streams in durable mode.

Broadcast mode uses the topic as a channel, as feathers-sync's redis adapter uses its key: `PUBLISH key body`,
`SUBSCRIBE key`. A pool (in practice one connection) publishes. One connection is subscribed, driven by hand rather
than by redis-py's `PubSub`, to know when a SUBSCRIBE is confirmed, notice a dead broker while idle and own the
reconnects. Both speak RESP2: every Redis knows it, and pub/sub messages are plain replies in it.

Durable mode (`backends.redis_streams`) keeps the same two connections, the same reconnects and error handling: the
pool sends XADD instead of PUBLISH, and the hand-driven connection reads the instance's consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

from backends.base import (
    Backend,
    BackendClosed,
    BackendConfig,
    BackendError,
    BackendState,
    BackendUnavailable,
    Feature,
    Handler,
    Message,
    MessageTooLarge,
    Mode,
    StateCallback,
    Subscription,
)
from backends.redis_streams import Streams
from backends.redis_uri import (
    CONNECTION_ERRORS,
    DEFAULT_MAX_MESSAGE_BYTES,
    RedisOptions,
    await_confirmation,
    connect_error,
    describe_error,
    parse_uri,
    publish_error,
    stop_task,
)
from sidecar.backoff import Backoff
from sidecar.logging import Outage

log = logging.getLogger(__name__)

def pubsub_hard_limit(value: str) -> int:
    """The hard limit of the `pubsub` class in CONFIG GET client-output-buffer-limit (`normal 0 0 0 ... pubsub
    33554432 8388608 60`), in bytes; 0 for none or unreadable."""
    fields = value.split()
    for i in range(0, len(fields) - 3, 4):
        if fields[i] == "pubsub" and fields[i + 1].isdigit():
            return int(fields[i + 1])
    return 0


class RedisSubscription(Subscription):
    def __init__(self, backend: RedisBackend, channel: bytes, handler: Handler) -> None:
        self.channel, self.handler, self.active, self._backend = channel, handler, True, backend

    async def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            await self._backend._unsubscribe(self)


@dataclass(eq=False, slots=True)
class Channel:
    """A channel we want to be subscribed to, and whether Redis has said we are (since the last connect)."""
    subscriptions: list[RedisSubscription] = field(default_factory=list)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    refused: str | None = None  # why Redis refused to subscribe us (an ACL, say)


class RedisBackend(Backend):
    name: ClassVar[str] = "redis"
    features: ClassVar[frozenset[Feature]] = frozenset()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self._options: RedisOptions | None = None
        self._redis: Redis | None = None
        self._conn: Connection | None = None  # the subscribed connection
        self._reader: asyncio.Task[None] | None = None
        # _live: the subscribed connection is up and read; if not, the reconnect (re)subscribes for us.
        self._closed = self._live = False
        self._write_lock = asyncio.Lock()
        self._channels: dict[bytes, Channel] = {}
        self._waiting_since: float | None = None  # when the reader began to wait for the broker
        self._silent: str | None = None  # why the watchdog dropped the connection
        self.where = "redis"  # host:port once started, for logs
        self._streams: Streams | None = None  # durable mode's consumer, made by start()
        self._backoff = Backoff(cap=config.reconnect_max_delay)
        self._outage = Outage(log)

    async def start(self) -> None:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        self._options = options = parse_uri(self.config.uri, self.config.connect_timeout)
        self.max_message_bytes, self.where = options.max_message_bytes, options.where
        pool_kwargs = options.connection_kwargs
        if self.config.mode is not Mode.DURABLE:
            # The pool only PUBLISHes here, each bounded by publish() itself. With a socket_timeout redis-py wraps every
            # command's write in asyncio.wait_for and its read in a timeout: a Task and two timers per event, a
            # seventh of the publishing daemon's CPU at 1,000 events/s (docs/benchmarks.md).
            pool_kwargs = {**pool_kwargs, "socket_timeout": None}
        self._redis = Redis(connection_pool=ConnectionPool(connection_class=options.connection_class, **pool_kwargs))
        self._conn = options.connection_class(**options.connection_kwargs)
        try:
            # One bound for the whole handshake (TCP, TLS, AUTH, SELECT) on both connections.
            async with asyncio.timeout(options.connect_timeout):
                await self._redis.ping()
                await self._conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        except CONNECTION_ERRORS as exc:
            await self._drop_connections(everything=True)
            raise connect_error(exc, options) from exc
        self._live = True
        if self.config.mode is Mode.DURABLE:
            self._streams = Streams(self.config, options, self._redis)
            await self._streams.check_persistence()
        else:
            await self._fit_subscribers_buffers()
        self._reader = asyncio.create_task(self._run(), name="syncar-redis-reader")
        log.info("redis: connected to %s (%s mode)", options.where, self.config.mode)
        self._set_state(BackendState.CONNECTED)

    async def _fit_subscribers_buffers(self) -> None:
        """Keep messages to a quarter of what Redis lets a subscriber's unsent replies reach: one message over that
        limit makes Redis disconnect every subscribed daemon at once."""
        assert self._redis is not None
        try:
            config = await self._redis.config_get("client-output-buffer-limit")
        except CONNECTION_ERRORS as exc:  # CONFIG is often not allowed (managed Redis, ACL): keep max_message_bytes
            log.debug("redis: cannot read client-output-buffer-limit: %s", exc)
            return
        hard = pubsub_hard_limit(config.get("client-output-buffer-limit") or "")
        if hard and hard // 4 < self.max_message_bytes:
            self.max_message_bytes = max(hard // 4, 1024)
            log.info("redis: events up to %d bytes, a quarter of %s's client-output-buffer-limit for pub/sub (%d)",
                     self.max_message_bytes, self.where, hard)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed, self._live = True, False
        if self._streams is not None:
            self._streams.stop()
        if self._reader is not None:
            await stop_task(self._reader, self._conn)
        for channel in self._channels.values():
            for subscription in channel.subscriptions:
                subscription.active = False
            channel.confirmed.set()  # wakes subscribe() calls still waiting; they see `_closed`
        self._channels.clear()
        if self._streams is not None:
            await self._streams.close()  # acknowledges what was handled, while the pool is still there
        await self._drop_connections(everything=True)
        self._set_state(BackendState.CLOSED)

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        if (largest := max(map(len, bodies), default=0)) > (limit := self.max_message_bytes):
            raise MessageTooLarge(f"redis: message of {largest} bytes is over max_message_bytes ({limit})")
        if self._redis is None or self._options is None:
            raise BackendUnavailable("redis: not started")
        if self.state is BackendState.RECONNECTING:
            # At once, not after a connect timeout: the outbox keeps the messages until we are CONNECTED.
            raise BackendUnavailable(f"redis: not connected to {self._options.where} (reconnecting)")
        try:
            # One bound for the whole publish; a timeout cancels redis-py's read, which drops the connection.
            async with asyncio.timeout(self._options.connection_kwargs["socket_timeout"]):
                if self._streams is not None:
                    await self._streams.publish(topic, bodies)
                elif len(bodies) == 1:
                    await self._redis.publish(topic, bodies[0])
                elif bodies:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for body in bodies:
                            pipe.publish(topic, body)
                        await pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise publish_error(exc, self._options) from exc
        # In durable mode redis-py writes through asyncio.wait_for, which on Python 3.11 can swallow a cancellation
        # (the outbox's at shutdown): give it back, or the caller would carry on as if it had never been cancelled.
        if (task := asyncio.current_task()) is not None and task.cancelling():
            raise asyncio.CancelledError

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        if self._options is None:
            raise BackendUnavailable("redis: not started")
        if self._streams is not None:
            return await self._streams.subscribe(topic, handler)
        name = topic.encode()
        subscription = RedisSubscription(self, name, handler)
        channel = self._channels.get(name)
        if channel is None:
            self._channels[name] = channel = Channel([subscription])
            await self._send_if_live("SUBSCRIBE", name)
        else:  # a SUBSCRIBE for it went out already, or the reconnect sends one
            channel.subscriptions.append(subscription)
        await await_confirmation(channel.confirmed, subscription, topic, self._options.connect_timeout)
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        if channel.refused:
            await subscription.unsubscribe()
            raise BackendError(f"redis: subscription to {topic!r} refused: {channel.refused}")
        return subscription

    async def _unsubscribe(self, subscription: RedisSubscription) -> None:
        channel = self._channels.get(subscription.channel)
        if channel is not None and subscription in channel.subscriptions:
            channel.subscriptions.remove(subscription)
            if not channel.subscriptions:
                del self._channels[subscription.channel]
                await self._send_if_live("UNSUBSCRIBE", subscription.channel)

    async def _send_if_live(self, *command: str | bytes) -> None:
        try:
            async with self._write_lock:
                # A dropped connection is left alone (redis-py would reconnect it); our reconnect subscribes.
                if self._live and self._conn is not None and self._conn.is_connected:
                    await self._conn.send_command(*command, check_health=False)
        except CONNECTION_ERRORS as exc:
            log.debug("redis: %s not sent, the reader will reconnect: %s", command[0], exc)

    async def _run(self) -> None:
        """Read the subscribed connection until close(); after any loss, reconnect and resubscribe."""
        while not self._closed:  # close() also cancels us
            try:
                if self._streams is not None:
                    assert self._conn is not None
                    await self._streams.read(self._conn)
                else:
                    await self._read()
            except CONNECTION_ERRORS as exc:
                reason = self._silent or describe_error(exc, self._options)
            except Exception as exc:  # a bug here must not end delivery for the rest of the daemon's life
                log.error("redis: reader failed, reconnecting: %s", exc)
                log.debug("redis: reader failure", exc_info=True)
                reason = "reader failed"
            if self._closed:  # close() cancelled us, and redis-py turned that into a connection error
                return
            self._live = False
            for channel in self._channels.values():
                channel.confirmed.clear()
            if self._streams is not None:
                self._streams.lost()
            self._outage.began("redis: connection to %s lost (%s); reconnecting", self.where, reason)
            self._set_state(BackendState.RECONNECTING)
            await self._drop_connections()  # best effort; idle publish connections too, they died with it
            await self._reconnect()

    async def _read(self) -> None:
        assert self._conn is not None and self._options is not None
        conn, loop = self._conn, asyncio.get_running_loop()
        self._silent = None
        watchdog = asyncio.create_task(self._watch(conn, self._options.health_check_interval))
        try:
            while True:  # until the connection fails
                self._waiting_since = loop.time()
                # No timeout per read (it would cost a quarter of the throughput): the watchdog has one.
                try:
                    response = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                except redis_errors.ResponseError as exc:  # a SUBSCRIBE refused; the connection is fine
                    for channel in self._channels.values():  # which one: those awaiting confirmation
                        if not channel.confirmed.is_set():
                            channel.refused = describe_error(exc, self._options)
                            channel.confirmed.set()
                    continue
                self._waiting_since = None
                await self._handle(response)
        finally:
            watchdog.cancel()

    async def _watch(self, conn: Connection, interval: float) -> None:
        """After half an `interval` of silence PING; if the reader hears nothing in a whole one, drop the connection."""
        loop, pinged_at = asyncio.get_running_loop(), None
        while True:  # until the reader cancels us
            await asyncio.sleep(interval / 4)
            since = self._waiting_since  # None: the reader is busy with a message, not waiting
            if since is None or loop.time() - since < interval / 2:
                pinged_at = None
            elif pinged_at is None:
                await self._send_if_live("PING")
                pinged_at = loop.time()
            elif loop.time() - pinged_at >= interval:
                self._silent = f"no reply to a ping within {interval}s"
                await conn.disconnect(nowait=True)
                return

    async def _handle(self, response: Any) -> None:
        if not isinstance(response, list) or len(response) < 3:
            return  # a pong: it has proved the connection alive
        kind, channel = response[0], self._channels.get(response[1])
        if channel is None:
            return  # unsubscribed; Redis sent this before our UNSUBSCRIBE reached it
        if kind == b"subscribe":
            channel.confirmed.set()
        elif kind == b"message":
            for subscription in tuple(channel.subscriptions):
                if subscription.active:  # an earlier handler may have unsubscribed it
                    try:
                        await subscription.handler(Message(response[2]))
                    except Exception as exc:  # no redelivery in broadcast mode
                        log.error("redis: subscriber failed, message dropped for it: %s", exc)
                        log.debug("redis: subscriber failure", exc_info=True)

    async def _drop_connections(self, everything: bool = False) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._conn is not None:
                await self._conn.disconnect(nowait=True)
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._redis is not None:
                await self._redis.connection_pool.disconnect(inuse_connections=everything)

    async def _reconnect(self) -> None:
        """Try until connected and resubscribed, backing off; the outage is logged once, then summarised."""
        backoff, delay = self._backoff, self._backoff.next()
        while True:  # until the broker is back, or close() cancels us
            await asyncio.sleep(delay)
            try:
                await self._resubscribe()
                break
            except CONNECTION_ERRORS as exc:
                if self._closed:
                    return
                await self._drop_connections()
                delay = backoff.next()
                self._outage.failed("redis: reconnect to %s failed (%s); next attempt in %.1fs", self.where,
                                    describe_error(exc, self._options), delay)
        restored = f"{len(self._streams)} streams" if self._streams is not None else f"{len(self._channels)} channels"
        self._outage.ended("redis: reconnected to %s after %.1fs (%d attempts); %s resubscribed", self.where,
                           self._outage.seconds, backoff.attempts, restored)
        backoff.reset()
        self._set_state(BackendState.CONNECTED)

    async def _resubscribe(self) -> None:
        conn, options = self._conn, self._options
        assert conn is not None and options is not None
        async with asyncio.timeout(options.connect_timeout):
            await conn.connect()  # type: ignore[no-untyped-call]
            if self._streams is not None:
                await self._streams.restore()
            names = set(self._channels)
            if names:
                async with self._write_lock:
                    await conn.send_command("SUBSCRIBE", *names, check_health=False)
                # A message that comes between two confirmations is delivered, not dropped.
                while not all(c.confirmed.is_set() for n, c in self._channels.items() if n in names):
                    await self._handle(await conn.read_response(disconnect_on_error=False))
        self._live = True
        # Channels joined or left meanwhile; from `_live` on, subscribe() and unsubscribe() write changes themselves.
        added, dropped = set(self._channels) - names, names - set(self._channels)
        if added:
            await self._send_if_live("SUBSCRIBE", *added)
        if dropped:
            await self._send_if_live("UNSUBSCRIBE", *dropped)


class RedisStreamsBackend(RedisBackend):
    """Durable mode: streams and consumer groups (`backends.redis_streams`)."""

    features: ClassVar[frozenset[Feature]] = frozenset({Feature.DURABLE})
