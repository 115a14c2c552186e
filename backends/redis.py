"""The Redis backend's two classes, one per mode, on the connections and reconnects of `backends.redis_base`.

`RedisBackend`, broadcast mode: pub/sub, as feathers-sync's redis adapter uses its key. `SUBSCRIBE key` and
`PUBLISH key body` on one RESP3 connection, written and read directly, as its bytes arrive (no pool, no per-command
machinery: `backends.redis_internals.Session`). A watchdog PINGs that connection after half a health-check interval
of silence, and drops it when a whole one goes by without a reply.

`RedisStreamsBackend`, durable mode: a stream per key, a consumer group per instance; the work is
`backends.redis_streams`'s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from backends.base import (
    BackendClosed,
    BackendConfig,
    BackendConfigError,
    BackendError,
    BackendUnavailable,
    Feature,
    Handler,
    Message,
    StateCallback,
    Subscription,
    describe_error,
    writes,
)
from backends.redis_base import RedisBaseBackend
from backends.redis_common import CONNECTION_ERRORS, RedisOptions, await_confirmation
from backends.redis_internals import Session, hand_over
from backends.redis_streams import Streams, stream_key

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
    def __init__(
        self, forget: Callable[[RedisSubscription], Awaitable[None]], channel: bytes, handler: Handler
    ) -> None:
        self.channel, self.handler, self.active, self._forget = channel, handler, True, forget

    async def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            await self._forget(self)


@dataclass(eq=False, slots=True)
class Channel:
    """A channel we want to be subscribed to, and whether Redis has said we are (since the last connect)."""

    subscriptions: list[RedisSubscription] = field(default_factory=list)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    refused: str | None = None  # why Redis refused to subscribe us (an ACL, say)


def _publishes(channel: bytes, bodies: Sequence[bytes]) -> list[bytes]:
    """The PUBLISH commands of `bodies` on `channel`, in RESP, as pieces: each body is one of them, as it is."""
    head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$" % (len(channel), channel)
    pieces: list[bytes] = []
    for body in bodies:
        pieces += (head, b"%d\r\n" % len(body), body, b"\r\n")
    return pieces


class RedisBackend(RedisBaseBackend):
    """Broadcast mode: pub/sub."""

    name: ClassVar[str] = "redis"
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.IN_ORDER})

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        # _live: the connection is up and read; if not, the reconnect (re)subscribes for us.
        self._live = False
        self._channels: dict[bytes, Channel] = {}
        self._session: Session | None = None  # reads and writes the connection, once connected
        self._silent: str | None = None  # why the watchdog dropped the connection
        self._resubscribed: set[bytes] = set()  # what the last reconnect sent a SUBSCRIBE for

    def _place(self, options: RedisOptions) -> None:
        # A fleet meets on the master of its key's slot, when it is live: PUBLISH then crosses no cluster bus link
        # (backends/redis_cluster.py).
        if self.config.key is not None and options.cluster is not None:
            options.cluster.prefer(self.config.key)

    def _read_kwargs(self, options: RedisOptions) -> dict[str, Any]:
        # RESP3, so that the subscribed connection publishes too (a Redis before 6.0 refuses HELLO: a refusal).
        return {**options.connection_kwargs, "protocol": 3}

    async def _connected(self, redis: Redis, options: RedisOptions) -> None:
        assert self._conn is not None  # connected by start()
        self._open(self._conn)
        self._live = True
        await self._fit_subscribers_buffers(redis)

    def _open(self, conn: Connection) -> Session:
        """Read and write the just connected `conn` ourselves from now on."""
        if self._session is not None:  # one a failed reconnect made: what ended it is not for anyone
            self._session.stop()
        self._session = session = Session(conn, self._on_reply)
        return session

    async def _fit_subscribers_buffers(self, redis: Redis) -> None:
        """Keep messages to a quarter of what Redis lets a subscriber's unsent replies reach: one message over that
        limit makes Redis disconnect every subscribed daemon at once."""
        try:
            config = await redis.config_get("client-output-buffer-limit")
        except CONNECTION_ERRORS as exc:  # CONFIG is often not allowed (managed Redis, ACL): keep max_message_bytes
            log.debug("redis: cannot read client-output-buffer-limit: %s", exc)
            return
        hard = pubsub_hard_limit(config.get("client-output-buffer-limit") or "")
        if hard and hard // 4 < self.max_message_bytes:
            self.max_message_bytes = max(hard // 4, 1024)
            log.info(
                "redis: events up to %d bytes, a quarter of %s's client-output-buffer-limit for pub/sub (%d)",
                self.max_message_bytes,
                self.where,
                hard,
            )

    def _stop_reading(self) -> None:
        self._live = False
        if self._session is not None:
            self._session.stop()

    async def _release(self) -> None:
        for channel in self._channels.values():
            for subscription in channel.subscriptions:
                subscription.active = False
            channel.confirmed.set()  # wakes subscribe() calls still waiting; they see `_closed`
        self._channels.clear()

    async def _send(self, redis: Redis, topic: str, bodies: Sequence[bytes]) -> None:
        """PUBLISH `bodies`, pipelined, on the subscribed connection: through the pool (`redis.publish()`) each one
        cost about 40 µs more CPU (its lock, checks, retry wrapper and observability hooks), a quarter of the
        publishing daemon's at 1,000 events/s (docs/benchmarks/history.md, "Second round: what each event costs"). The
        commands are ours, not redis-py's
        pack_command(), which copies each body (24% of the publishing daemon's CPU at 4 KiB payloads), and a large
        body is a write of its own (`backends.base.writes`). A publish given up on (a timeout, a cancel) leaves the
        connection as it is: the session knows whose each reply is."""
        session = self._session
        if session is None or not session.usable:
            raise BackendUnavailable(f"redis: not connected to {self.where} (reconnecting)")
        if not bodies:
            return
        channel = topic.encode()
        replies = await session.publish(writes(_publishes(channel, bodies)), channel, bodies)
        refused = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if refused is not None:  # an ACL, say; every reply was read, so the connection is fine
            raise refused

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        options = self._usable()
        name = topic.encode()
        subscription = RedisSubscription(self._unsubscribe, name, handler)
        channel = self._channels.get(name)
        if channel is None:
            self._channels[name] = channel = Channel([subscription])
            self._send_if_live(b"SUBSCRIBE", name)
        else:  # a SUBSCRIBE for it went out already, or the reconnect sends one
            channel.subscriptions.append(subscription)
        await await_confirmation(channel.confirmed, subscription, topic, options.connect_timeout)
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
                self._send_if_live(b"UNSUBSCRIBE", subscription.channel)

    def _send_if_live(self, *command: bytes) -> None:
        # A dropped connection is left alone; our reconnect subscribes.
        if self._live and self._session is not None and self._session.usable:
            self._session.command(*command)

    async def _read(self, conn: Connection, options: RedisOptions) -> None:
        self._silent = None
        session = self._session
        if session is None:
            raise redis_errors.ConnectionError("not connected")
        # No timeout per read (it would cost a quarter of the throughput): the watchdog has one.
        watchdog = asyncio.create_task(self._watch(conn, session, options.health_check_interval))
        try:
            await session.lost()
        finally:
            watchdog.cancel()
            session.stop()

    def _why_lost(self) -> str | None:
        return self._silent

    async def _watch(self, conn: Connection, session: Session, interval: float) -> None:
        """After half an `interval` of silence PING; if the reader hears nothing in a whole one, drop the connection."""
        loop, pinged_at = asyncio.get_running_loop(), None
        while True:  # until the reader cancels us
            await asyncio.sleep(interval / 4)
            since = session.waiting_since  # None: a handler holds the reading up, we are not waiting
            if since is None or (pinged_at is not None and since >= pinged_at):
                # Heard from since the ping. Judged by when, not by how recently: a tick that comes late (a busy
                # loop, a process starved of CPU) would otherwise miss the answer and take the ping for unanswered.
                # At, too: uvloop reads its clock once per turn, so a pong read in the turn that sent the ping
                # carries the ping's time (and the ping goes out only after half an interval of silence, so nothing
                # older can).
                pinged_at = None
            if since is None or loop.time() - since < interval / 2:
                continue
            if pinged_at is None:
                pinged_at = loop.time()
                self._send_if_live(b"PING")
            elif loop.time() - pinged_at >= interval:
                self._silent = f"no reply to a ping within {interval}s"
                await conn.disconnect(nowait=True)
                return

    def _on_reply(self, reply: Any) -> Awaitable[None] | None:
        """One reply on the subscribed connection; what is left to await if a handler has to wait."""
        if isinstance(reply, redis_errors.BusyLoadingError):
            # The watchdog's PING while Redis loads its dataset after a restart: an answer, so the connection is
            # alive, and pub/sub works meanwhile (only data commands wait for the load).
            return None
        if isinstance(reply, redis_errors.ConnectionError):
            raise reply
        if isinstance(reply, redis_errors.ResponseError):  # a SUBSCRIBE refused; the connection is fine
            secrets = self._options.secrets if self._options is not None else ()
            for waiting in self._channels.values():  # which one: those awaiting confirmation
                if not waiting.confirmed.is_set():
                    waiting.refused = describe_error(reply, secrets)
                    waiting.confirmed.set()
            return None
        if not isinstance(reply, list) or len(reply) < 3:
            return None  # a pong: it has proved the connection alive
        kind, channel = reply[0], self._channels.get(reply[1])
        if channel is None:
            return None  # unsubscribed; Redis sent this before our UNSUBSCRIBE reached it
        if kind == b"message":
            return hand_over(tuple(channel.subscriptions), Message(reply[2]))
        if kind == b"subscribe":
            channel.confirmed.set()
        return None

    def _lost(self) -> None:
        self._live = False
        for channel in self._channels.values():
            channel.confirmed.clear()

    async def _restore(self, conn: Connection) -> None:
        session = self._open(conn)
        self._resubscribed = names = set(self._channels)
        if names:
            session.command(b"SUBSCRIBE", *names)
            # A message that comes between two confirmations is delivered, not dropped: the session hands it over.
            await session.until(lambda: all(c.confirmed.is_set() for n, c in self._channels.items() if n in names))

    async def _resume(self) -> str:
        self._live = True
        # Channels joined or left meanwhile; from `_live` on, subscribe() and unsubscribe() write changes themselves.
        names = self._resubscribed
        added, dropped = set(self._channels) - names, names - set(self._channels)
        if added:
            self._send_if_live(b"SUBSCRIBE", *added)
        if dropped:
            self._send_if_live(b"UNSUBSCRIBE", *dropped)
        return f"{len(self._channels)} channels"


class RedisStreamsBackend(RedisBaseBackend):
    """Durable mode: streams and consumer groups (`backends.redis_streams`)."""

    name: ClassVar[str] = "redis"
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.DURABLE})

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self._streams: Streams | None = None  # made by start(), on its pool

    def _place(self, options: RedisOptions) -> None:
        if self.config.key is None or options.cluster is None:
            raise BackendConfigError("redis: durable mode on a cluster needs its key before it connects")
        options.cluster.place(stream_key(self.config.key, cluster=True))

    def _made(self) -> Streams:
        if self._streams is None:
            raise BackendUnavailable("redis: not started")
        return self._streams

    async def _connected(self, redis: Redis, options: RedisOptions) -> None:
        self._streams = Streams(self.config, options, redis)
        await self._streams.upkeep.check_persistence()

    async def _send(self, redis: Redis, topic: str, bodies: Sequence[bytes]) -> None:
        await self._made().publish(topic, bodies)

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        self._usable()
        return await self._made().subscribe(topic, handler)

    async def _read(self, conn: Connection, options: RedisOptions) -> None:
        await self._made().read(conn)

    def _lost(self) -> None:
        self._made().lost()

    async def _restore(self, conn: Connection) -> None:
        await self._made().restore()

    async def _resume(self) -> str:
        return f"{len(self._made())} streams"

    def _stop_reading(self) -> None:
        if self._streams is not None:
            self._streams.stop()

    async def _release(self) -> None:
        if self._streams is not None:
            await self._streams.close()  # acknowledges what was handled, while the pool is still there
