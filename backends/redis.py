"""Redis pub/sub backend (broadcast mode) on redis-py's asyncio client with hiredis.

The topic is a channel, used as feathers-sync's redis adapter uses its key: `PUBLISH key body`, `SUBSCRIBE key`.
A pool (in practice one connection) publishes. One connection is subscribed, driven by hand rather than by redis-py's
`PubSub`, to know when a SUBSCRIBE is confirmed, notice a dead broker while idle and own the reconnects. Both speak
RESP2: every Redis knows it, and pub/sub messages are plain replies in it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from backends.base import (
    Backend,
    BackendClosed,
    BackendConfig,
    BackendConfigError,
    BackendError,
    BackendState,
    BackendUnavailable,
    Feature,
    Handler,
    Message,
    MessageTooLarge,
    PublishTimeout,
    StateCallback,
    Subscription,
)

log = logging.getLogger(__name__)

#: Redis takes 512 MB, but drops a subscriber whose unsent output passes 32 MB (`client-output-buffer-limit
#: pubsub 32mb 8mb 60`): one bigger message would cut off every daemon. Raise both together, or neither.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: A publish not answered within this long fails; a healthy Redis answers in microseconds.
DEFAULT_SOCKET_TIMEOUT = 5.0
#: Half this long without a reply on the subscribed connection sends a PING; no answer within it is a loss.
DEFAULT_HEALTH_CHECK_INTERVAL = 1.0
#: Reconnect back-off: the first retry after at most this long, doubling up to the cap, with jitter.
RECONNECT_INITIAL, RECONNECT_MAX = 0.1, 1.0
CONNECTION_ERRORS = (redis_errors.RedisError, OSError, TimeoutError)  # a lost connection, from redis-py or the socket
#: URI query options; anything else is refused, so that a typo is not silently ignored.
URI_OPTIONS = frozenset({"db", "client_name", "socket_connect_timeout", "socket_timeout", "health_check_interval",
                         "max_message_bytes"})
#: Only with rediss://; redis-py's SSLConnection takes them under the same names.
TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                         "ssl_check_hostname"})


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """A redis:// or rediss:// URI, validated."""
    where: str  # host:port for messages; never the credentials
    connection_class: type[Connection]
    connection_kwargs: dict[str, Any]
    connect_timeout: float
    health_check_interval: float
    max_message_bytes: int
    password: str | None  # to scrub from every message we make


def parse_uri(uri: str, connect_timeout: float) -> RedisOptions:
    """Read `redis[s]://[[user]:password@]host[:port][/db][?option=value&...]`; BackendError if it is bad."""
    parts = urlsplit(uri)
    tls = parts.scheme.lower() == "rediss"
    query = parse_qsl(parts.query, keep_blank_values=True)
    for name, _ in query:
        if name not in URI_OPTIONS and not (tls and name in TLS_OPTIONS):
            hint = " (TLS options need rediss://)" if name in TLS_OPTIONS else ""
            known = ", ".join(sorted(URI_OPTIONS | TLS_OPTIONS if tls else URI_OPTIONS))
            raise BackendConfigError(f"redis: unknown URI option {name!r}{hint}; known: {known}")
    ours = {name: value for name, value in query if name in ("health_check_interval", "max_message_bytes")}
    passed = urlencode([(name, value) for name, value in query if name not in ours])  # the rest is redis-py's
    try:
        kwargs: dict[str, Any] = dict(parse_url(urlunsplit(parts._replace(query=passed))))
        interval = float(ours.get("health_check_interval", DEFAULT_HEALTH_CHECK_INTERVAL))
        max_bytes = int(ours.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES))
        kwargs.setdefault("socket_connect_timeout", connect_timeout)
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        if min(interval, kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) <= 0 or max_bytes < 1024:
            raise ValueError("timeouts and health_check_interval must be above 0, max_message_bytes at least 1024")
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):  # say which file, as ssl would not
            if name in kwargs and not os.access(kwargs[name], os.R_OK):
                raise ValueError(f"{name}: cannot read {kwargs[name]}")
    except ValueError as exc:
        raise BackendConfigError(f"redis: invalid URI: {describe_error(exc, None)}") from None
    if kwargs.get("ssl_cert_reqs") == "none":
        kwargs.setdefault("ssl_check_hostname", False)  # ssl refuses to check the name of a peer it does not verify
    host, port = kwargs.setdefault("host", "localhost"), kwargs.setdefault("port", 6379)
    # RESP2 for plain pub/sub replies; no retries inside redis-py: the outbox and our reconnect retry.
    kwargs.update(socket_keepalive=True, protocol=2, retry=Retry(NoBackoff(), 0))
    return RedisOptions(
        where=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        connection_class=kwargs.pop("connection_class", Connection), connection_kwargs=kwargs,
        connect_timeout=kwargs["socket_connect_timeout"], health_check_interval=interval,
        max_message_bytes=max_bytes, password=kwargs.get("password"),
    )


def describe_error(exc: BaseException, options: RedisOptions | None) -> str:
    """One lowercase line about a failure, for logs and error messages; never the password."""
    cause = exc.__cause__ or exc.__context__  # redis-py wraps the socket's error
    os_error = exc if isinstance(exc, OSError) else cause if isinstance(cause, OSError) else None
    if isinstance(os_error, ssl.SSLCertVerificationError):
        text = f"tls: certificate verify failed: {os_error.verify_message}"
    elif isinstance(os_error, ssl.SSLError):
        text = f"tls: {(os_error.reason or str(os_error)).replace('_', ' ').lower()}"
    elif isinstance(exc, (TimeoutError, redis_errors.TimeoutError)):
        text = "timed out"
    elif os_error is not None and os_error.errno:
        text = os.strerror(os_error.errno)
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split()).rstrip(".")
    if text[1:2].islower():  # "Connection refused", but not "AUTH failed" or "DB index"
        text = text[:1].lower() + text[1:]
    if options is not None and options.password:
        text = text.replace(options.password, "***")
    return text


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
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.ORDERED, Feature.CONFIRMS})
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

    async def start(self) -> None:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        self._options = options = parse_uri(self.config.uri, self.config.connect_timeout)
        self.max_message_bytes, self.where = options.max_message_bytes, options.where
        self._redis = Redis(connection_pool=ConnectionPool(connection_class=options.connection_class,
                                                           **options.connection_kwargs))
        self._conn = options.connection_class(**options.connection_kwargs)
        try:
            # One bound for the whole handshake (TCP, TLS, AUTH, SELECT) on both connections.
            async with asyncio.timeout(options.connect_timeout):
                await self._redis.ping()
                await self._conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        except CONNECTION_ERRORS as exc:
            await self._drop_connections(everything=True)
            reason = describe_error(exc, options)
            raise BackendUnavailable(f"redis: cannot connect to {options.where}: {reason}") from exc
        self._live = True
        self._reader = asyncio.create_task(self._run(), name="syncar-redis-reader")
        log.info("redis: connected to %s", options.where)
        self._set_state(BackendState.CONNECTED)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed, self._live = True, False
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for channel in self._channels.values():
            for subscription in channel.subscriptions:
                subscription.active = False
            channel.confirmed.set()  # wakes subscribe() calls still waiting; they see `_closed`
        self._channels.clear()
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
            if len(bodies) == 1:
                await self._redis.publish(topic, bodies[0])
            elif bodies:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for body in bodies:
                        pipe.publish(topic, body)
                    await pipe.execute()
        except redis_errors.TimeoutError as exc:
            timeout = self._options.connection_kwargs["socket_timeout"]
            raise PublishTimeout(f"redis: publish timed out after {timeout}s (socket_timeout)") from exc
        except (redis_errors.ConnectionError, OSError) as exc:
            raise BackendUnavailable(f"redis: publish failed: {describe_error(exc, self._options)}") from exc
        except redis_errors.RedisError as exc:  # refused by Redis itself: an ACL without PUBLISH, say
            raise BackendError(f"redis: publish refused: {describe_error(exc, self._options)}") from exc

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        if self._options is None:
            raise BackendUnavailable("redis: not started")
        name = topic.encode()
        subscription = RedisSubscription(self, name, handler)
        channel = self._channels.get(name)
        if channel is None:
            self._channels[name] = channel = Channel([subscription])
            await self._send_if_live("SUBSCRIBE", name)
        else:  # a SUBSCRIBE for it went out already, or the reconnect sends one
            channel.subscriptions.append(subscription)
        try:
            async with asyncio.timeout(self._options.connect_timeout):
                await channel.confirmed.wait()
        except TimeoutError:
            await subscription.unsubscribe()
            raise BackendUnavailable(f"redis: subscription to {topic!r} not confirmed within "
                                     f"{self._options.connect_timeout}s") from None
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
        while True:  # until close() cancels us
            try:
                await self._read()
            except CONNECTION_ERRORS as exc:
                reason = self._silent or describe_error(exc, self._options)
            except Exception as exc:  # a bug here must not end delivery for the rest of the daemon's life
                log.error("redis: reader failed, reconnecting: %s", exc)
                log.debug("redis: reader failure", exc_info=True)
                reason = "reader failed"
            self._live = False
            for channel in self._channels.values():
                channel.confirmed.clear()
            log.warning("redis: connection to %s lost (%s); reconnecting", self.where, reason)
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
                    except Exception as exc:  # no REDELIVERY in broadcast mode
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
        """Try until connected and resubscribed, with capped exponential back-off and jitter."""
        loop = asyncio.get_running_loop()
        lost_at, delay, attempts = loop.time(), RECONNECT_INITIAL, 0
        while True:  # until the broker is back, or close() cancels us
            await asyncio.sleep(random.uniform(delay / 2, delay))
            attempts += 1
            try:
                await self._resubscribe()
                break
            except CONNECTION_ERRORS as exc:
                await self._drop_connections()
                delay = min(delay * 2, RECONNECT_MAX)
                log.warning("redis: reconnect to %s failed (%s); next attempt within %.1fs", self.where,
                            describe_error(exc, self._options), delay)
        log.info("redis: reconnected to %s after %.1fs (%d attempts); %d channels resubscribed",
                 self.where, loop.time() - lost_at, attempts, len(self._channels))
        self._set_state(BackendState.CONNECTED)

    async def _resubscribe(self) -> None:
        conn, options = self._conn, self._options
        assert conn is not None and options is not None
        async with asyncio.timeout(options.connect_timeout):
            await conn.connect()  # type: ignore[no-untyped-call]
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
