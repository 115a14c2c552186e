"""What both modes of the Redis backend share: the connections, the first connect, the reconnects and publish's
checks and errors.

A pool (in practice one connection) sends commands: in durable mode XADD (`backends.redis_streams`), in broadcast
mode only the checks at start. One more connection is read by hand rather than through redis-py's helpers, to know
when a subscription is confirmed, notice a dead broker while idle and own the reconnects: the mode's class says what
to send and read on it, and in what protocol (`_read_kwargs`): broadcast mode both subscribes and publishes on it,
in RESP3 (`backends.redis`); the rest speaks RESP2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from backends.base import (
    Backend,
    BackendClosed,
    BackendConfig,
    BackendState,
    BackendUnavailable,
    Mode,
    StateCallback,
    host_port,
)
from backends.deadlines import Deadlines
from backends.redis_common import (
    CONNECTION_ERRORS,
    DEFAULT_MAX_MESSAGE_BYTES,
    RedisOptions,
    connect_error,
    describe,
    parse_uri,
    publish_error,
    stop_task,
    why_refused,
)
from sidecar.backoff import Backoff
from sidecar.logging import Outage

log = logging.getLogger(__name__)


class RedisBaseBackend(Backend):
    """The connections and reconnects of a Redis backend; a subclass is one mode, and says what goes over them."""

    name = "redis"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self._options: RedisOptions | None = None
        self._redis: Redis | None = None  # the pool that sends commands
        self._conn: Connection | None = None  # the connection read by hand
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.where = "redis"  # host:port once started, for logs
        self._backoff = Backoff(cap=config.reconnect_max_delay)
        self.outage = Outage(log)  # the current loss of the broker, if any: how long, how many failed attempts
        self._publishes: Deadlines | None = None  # bounds each publish to socket_timeout, once started

    def _read_kwargs(self, options: RedisOptions) -> dict[str, Any]:
        """The settings of the connection read by hand."""
        return options.connection_kwargs

    @abstractmethod
    async def _connected(self, redis: Redis, options: RedisOptions) -> None:
        """The first connect worked: check what the mode needs of Redis."""

    @abstractmethod
    async def _send(self, redis: Redis, topic: str, bodies: Sequence[bytes]) -> None:
        """Send `bodies` in order through the pool; redis-py's errors propagate."""

    @abstractmethod
    async def _read(self, conn: Connection, options: RedisOptions) -> None:
        """Read `conn` and deliver what comes, until the connection fails."""

    @abstractmethod
    def _lost(self) -> None:
        """The read connection is gone: nothing counts as subscribed until `_restore()`."""

    @abstractmethod
    async def _restore(self, conn: Connection) -> None:
        """On the reconnected `conn`, within the connect timeout: subscribe again."""

    @abstractmethod
    async def _resume(self) -> str:
        """After `_restore()`: catch up with what changed meanwhile; say what is subscribed, for the log."""

    @abstractmethod
    def _stop_reading(self) -> None:
        """close() began: read nothing more."""

    @abstractmethod
    async def _release(self) -> None:
        """close(), once the reader has stopped and before the connections go: end every subscription."""

    def _place(self, options: RedisOptions) -> None:
        """On a cluster, before the first connect: say where the connections go (any live node by default)."""

    @property
    def node(self) -> str | None:
        """The server's host:port, while connected; through Sentinel or a cluster, the node the read connection
        reached."""
        return self._address() if self.state is BackendState.CONNECTED else None

    @property
    def members(self) -> tuple[str, ...]:
        """Through Sentinel, the sentinels the URI lists; on a cluster, its nodes as they announce themselves."""
        if self._options is not None and self._options.cluster is not None:
            return self._options.cluster.members
        if self._options is None or self._options.sentinel is None:
            return ()
        return tuple(
            host_port(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in self._options.sentinel.sentinels
        )

    def _usable(self) -> RedisOptions:
        """The parsed URI; BackendClosed after close(), BackendUnavailable before start()."""
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        if self._options is None:
            raise BackendUnavailable("redis: not started")
        return self._options

    async def start(self) -> None:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        self._options = options = parse_uri(self.config.uri, self.config.connect_timeout)
        self._publishes = Deadlines(options.connection_kwargs["socket_timeout"])
        self.max_message_bytes, self.where = options.max_message_bytes, options.where
        if options.cluster is not None:
            self._place(options)
        self._redis = Redis(connection_pool=options.pool(options.connection_kwargs))
        self._conn = options.connection(self._redis.connection_pool, self._read_kwargs(options))
        try:
            # One bound for the whole handshake (TCP, TLS, AUTH, SELECT) on both connections.
            async with asyncio.timeout(options.connect_timeout):
                await self._redis.ping()
                await self._conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        except CONNECTION_ERRORS as exc:
            reason = await why_refused(exc, options)
            await self._drop_connections(everything=True)
            raise connect_error(reason, options) from exc
        await self._connected(self._redis, options)
        self._reader = asyncio.create_task(self._run(self._conn, options), name="syncar-redis-reader")
        log.info("redis: connected to %s (%s mode)", self._node, self.config.mode)
        self._set_state(BackendState.CONNECTED)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        if self._publishes is not None:
            self._publishes.close()
        if self._reader is not None:
            await stop_task(self._reader, self._conn)
        await self._release()
        await self._drop_connections(everything=True)
        self._set_state(BackendState.CLOSED)

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        self._check_sizes(bodies, what="max_message_bytes")
        if self._redis is None or self._options is None or self._publishes is None:
            raise BackendUnavailable("redis: not started")
        if self.state is BackendState.RECONNECTING:
            # At once, not after a connect timeout: the outbox keeps the messages until we are CONNECTED.
            raise BackendUnavailable(f"redis: not connected to {self._options.where} (reconnecting)")
        try:
            # One bound for the whole publish (socket_timeout); a timeout cancels redis-py's read, which drops the
            # connection. Not asyncio.timeout: a timer made and closed per publish, and a turn of the loop for it.
            async with self._publishes:
                await self._send(self._redis, topic, bodies)
        except CONNECTION_ERRORS as exc:
            raise publish_error(exc, self._options) from exc
        # In durable mode redis-py writes through asyncio.wait_for, which on Python 3.11 can swallow a cancellation
        # (the outbox's at shutdown): give it back, or the caller would carry on as if it had never been cancelled.
        if self.config.mode is Mode.DURABLE and (task := asyncio.current_task()) is not None and task.cancelling():
            raise asyncio.CancelledError

    async def _run(self, conn: Connection, options: RedisOptions) -> None:
        """Read the connection until close(); after any loss, reconnect and subscribe again."""
        while not self._closed:  # close() also cancels us
            try:
                await self._read(conn, options)
            except CONNECTION_ERRORS as exc:
                reason = self._why_lost() or describe(exc, options)
            except Exception as exc:  # a bug here must not end delivery for the rest of the daemon's life
                log.error("redis: reader failed, reconnecting: %s", exc)
                log.debug("redis: reader failure", exc_info=True)
                reason = "reader failed"
            if self._closed:  # close() cancelled us, and redis-py turned that into a connection error
                return
            self._lost()
            self.outage.began("redis: connection to %s lost (%s); reconnecting", self._node, reason)
            self._set_state(BackendState.RECONNECTING)
            await self._drop_connections()  # best effort; idle publish connections too, they died with it
            await self._reconnect(conn, options)

    def _address(self) -> str:
        """Where the read connection goes: host:port (through Sentinel or a cluster, the node it found last)."""
        options = self._options
        if options is None or self._conn is None or (options.sentinel is None and options.cluster is None):
            return self.where
        return host_port(self._conn.host, self._conn.port)

    @property
    def _node(self) -> str:
        """For the log: host:port, and through Sentinel which master that is, on a cluster which node."""
        if self._options is not None and self._options.cluster is not None:
            return f"cluster node {self._address()}"
        if self._options is None or self._options.sentinel is None:
            return self.where
        return f"{self._options.master_name} at {self._address()}"

    def _why_lost(self) -> str | None:
        """Why the mode's own checks dropped the connection, if they did (a watchdog)."""
        return None

    async def _drop_connections(self, everything: bool = False) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._conn is not None:
                await self._conn.disconnect(nowait=True)
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._redis is not None:
                await self._redis.connection_pool.disconnect(inuse_connections=everything)
        if everything and self._options is not None and self._options.sentinel is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._options.sentinel.aclose()

    async def _reconnect(self, conn: Connection, options: RedisOptions) -> None:
        """Try until connected and subscribed again, backing off; the outage is logged once, then summarised."""
        backoff, delay = self._backoff, self._backoff.next()
        while True:  # until the broker is back, or close() cancels us
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(options.connect_timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
                    await self._restore(conn)
                break
            except CONNECTION_ERRORS as exc:
                if self._closed:
                    return
                await self._drop_connections()
                delay = backoff.next()
                self.outage.failed(
                    "redis: reconnect to %s failed (%s); next attempt in %.1fs",
                    self.where,
                    describe(exc, options),
                    delay,
                )
        restored = await self._resume()
        self.outage.ended(
            "redis: reconnected to %s after %.1fs (%d attempts); %s resubscribed",
            self._node,
            self.outage.seconds,
            backoff.attempts,
            restored,
        )
        backoff.reset()
        self._set_state(BackendState.CONNECTED)
