"""Redis pub/sub backend (broadcast mode), on redis-py's asyncio client with hiredis.

The topic is a Redis channel, used exactly as feathers-sync's redis adapter
uses its key: `PUBLISH <key> <body>` and `SUBSCRIBE <key>`, nothing else.

Two kinds of connection: a pool (in practice one long-lived connection) for
PUBLISH, and one connection of our own in subscribed mode. We drive that one
by hand rather than through redis-py's `PubSub`: we need to know when a
SUBSCRIBE is confirmed, to notice a dead broker while idle, and to own the
reconnects (redis-py's hidden retries would hide state changes). Both speak
RESP2, which every Redis understands and where pub/sub messages are plain
replies (redis-py 8 defaults to RESP3, where they are push frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    PublishTimeout,
    StateCallback,
    Subscription,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 6379
#: Redis takes 512 MB, but drops a subscriber whose unsent output passes 32 MB (`client-output-buffer-limit
#: pubsub 32mb 8mb 60`): one bigger message would cut off every daemon. Raise both together, or neither.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: A publish not answered within this long fails; a healthy Redis answers in microseconds.
DEFAULT_SOCKET_TIMEOUT = 5.0
#: This long without a byte on the subscribed connection sends a PING; as long again without an answer is a loss.
DEFAULT_HEALTH_CHECK_INTERVAL = 1.0
#: Reconnect back-off: the first retry after at most this long, doubling up to the cap, with jitter.
RECONNECT_INITIAL = 0.1
RECONNECT_MAX = 1.0
#: What a lost connection looks like, from redis-py and from the socket below it.
CONNECTION_ERRORS = (RedisError, OSError, TimeoutError)


#: URI query options; anything else is refused, so that a typo is not silently ignored.
URI_OPTIONS = frozenset({"db", "client_name", "socket_connect_timeout", "socket_timeout", "health_check_interval",
                         "max_message_bytes"})
#: Only with rediss://; redis-py's SSLConnection takes them under the same names.
TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                         "ssl_check_hostname"})
#: Options of the backend itself rather than of the connection.
BACKEND_OPTIONS = frozenset({"health_check_interval", "max_message_bytes"})


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """A redis:// or rediss:// URI, validated."""

    where: str  # host:port for messages; never the credentials
    connection_class: type[Connection]
    connection_kwargs: dict[str, Any]
    connect_timeout: float
    socket_timeout: float
    health_check_interval: float
    max_message_bytes: int
    password: str | None  # to scrub from every message we make


def parse_uri(uri: str, connect_timeout: float) -> RedisOptions:
    """Read `redis[s]://[[user]:password@]host[:port][/db][?option=value&...]`.

    Raises:
        BackendError: a malformed URI or an unknown option; the message never repeats the URI.
    """
    parts = urlsplit(uri)
    tls = parts.scheme.lower() == "rediss"
    query = parse_qsl(parts.query, keep_blank_values=True)
    for name, _ in query:
        if name not in URI_OPTIONS and not (tls and name in TLS_OPTIONS):
            hint = " (TLS options need rediss://)" if name in TLS_OPTIONS else ""
            known = ", ".join(sorted(URI_OPTIONS | TLS_OPTIONS if tls else URI_OPTIONS))
            raise BackendError(f"redis: unknown URI option {name!r}{hint}; known: {known}")
    ours = {name: value for name, value in query if name in BACKEND_OPTIONS}
    passed = urlencode([(name, value) for name, value in query if name not in BACKEND_OPTIONS])
    try:
        kwargs: dict[str, Any] = dict(parse_url(urlunsplit(parts._replace(query=passed))))
        interval = float(ours.get("health_check_interval", DEFAULT_HEALTH_CHECK_INTERVAL))
        max_bytes = int(ours.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES))
        kwargs.setdefault("socket_connect_timeout", connect_timeout)
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        if not (interval > 0 and kwargs["socket_connect_timeout"] > 0 and kwargs["socket_timeout"] > 0):
            raise ValueError("timeouts and health_check_interval must be above 0 seconds")
        if max_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
    except ValueError as exc:
        raise BackendError(f"redis: invalid URI: {describe_error(exc, None)}") from None
    if kwargs.get("ssl_cert_reqs") == "none":
        kwargs.setdefault("ssl_check_hostname", False)  # ssl refuses to check the name of a peer it does not verify
    host, port = kwargs.setdefault("host", "localhost"), kwargs.setdefault("port", DEFAULT_PORT)
    kwargs.pop("connection_class", None)
    # RESP2 for plain pub/sub replies; no retries inside redis-py: the outbox and our reconnect retry.
    kwargs.update(socket_keepalive=True, protocol=2, retry=Retry(NoBackoff(), 0))
    return RedisOptions(
        where=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        connection_class=SSLConnection if tls else Connection, connection_kwargs=kwargs,
        connect_timeout=kwargs["socket_connect_timeout"], socket_timeout=kwargs["socket_timeout"],
        health_check_interval=interval, max_message_bytes=max_bytes, password=kwargs.get("password"),
    )


def describe_error(exc: BaseException, options: RedisOptions | None) -> str:
    """One lowercase line about a failure, for logs and error messages; never the password."""
    cause = exc.__cause__ or exc.__context__
    tls_error = exc if isinstance(exc, ssl.SSLError) else cause if isinstance(cause, ssl.SSLError) else None
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        text = f"tls: certificate verify failed: {tls_error.verify_message}"
    elif tls_error is not None:
        text = f"tls: {(tls_error.reason or str(tls_error)).replace('_', ' ')}"
    elif isinstance(exc, (TimeoutError, RedisTimeoutError)):
        text = "timed out"
    elif isinstance(exc, OSError) and exc.errno:
        text = os.strerror(exc.errno)
    elif isinstance(exc, RedisConnectionError) and isinstance(cause, OSError) and cause.errno:
        text = os.strerror(cause.errno)
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split()).rstrip(".")
    if text[1:2].islower():  # "Connection refused", but not "AUTH failed" or "DB index"
        text = text[:1].lower() + text[1:]
    if options is not None and options.password:
        text = text.replace(options.password, "***")
    return text


async def _connect(conn: Connection) -> None:
    await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


class BrokerSilent(Exception):
    """The subscribed connection did not answer a PING in time: a dead broker or a cut network."""


class RedisSubscription(Subscription):
    def __init__(self, backend: RedisBackend, channel: bytes, handler: Handler) -> None:
        self.channel = channel
        self.handler = handler
        self.active = True
        self._backend = backend

    async def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            await self._backend._unsubscribe(self)


class RedisBackend(Backend):
    name: ClassVar[str] = "redis"
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.ORDERED, Feature.CONFIRMS})
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self._options: RedisOptions | None = None
        self._pool: ConnectionPool | None = None
        self._redis: Redis | None = None
        self._conn: Connection | None = None  # the subscribed connection
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        # True while the subscribed connection is up and the reader task reads it; only then do
        # subscribe() and unsubscribe() write to it themselves, otherwise the reconnect does it for them.
        self._live = False
        self._write_lock = asyncio.Lock()
        self._topics: dict[bytes, list[RedisSubscription]] = {}  # channel -> subscriptions, in order
        self._confirmed: set[bytes] = set()  # channels Redis said we are subscribed to
        self._pending: dict[bytes, list[asyncio.Future[None]]] = {}  # subscribe() calls awaiting Redis

    @property
    def where(self) -> str:
        return self._options.where if self._options else "redis"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        self._options = options = parse_uri(self.config.uri, self.config.connect_timeout)
        self.max_message_bytes = options.max_message_bytes
        self._pool = ConnectionPool(connection_class=options.connection_class, **options.connection_kwargs)
        self._redis = Redis(connection_pool=self._pool)
        self._conn = options.connection_class(**options.connection_kwargs)
        try:
            # One bound for the whole handshake (TCP, TLS, AUTH, SELECT) on both connections.
            async with asyncio.timeout(options.connect_timeout):
                await self._redis.ping()
                await _connect(self._conn)
        except CONNECTION_ERRORS as exc:
            await self._disconnect()
            message = f"redis: cannot connect to {options.where}: {describe_error(exc, options)}"
            log.debug("%s", message, exc_info=True)
            raise BackendUnavailable(message) from exc
        self._live = True
        self._reader = asyncio.create_task(self._run(), name="syncar-redis-reader")
        log.info("redis: connected to %s", options.where)
        self._set_state(BackendState.CONNECTED)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._live = False
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for future in (future for futures in self._pending.values() for future in futures):
            if not future.done():
                future.set_exception(BackendClosed("redis: backend is closed"))
        for subscription in (s for subscriptions in self._topics.values() for s in subscriptions):
            subscription.active = False
        self._topics.clear()
        await self._disconnect()
        self._set_state(BackendState.CLOSED)

    async def _disconnect(self) -> None:
        # Best effort: the broker may be gone, and close() must not fail because of that.
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._conn is not None:
                await self._conn.disconnect(nowait=True)
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._redis is not None:
                await self._redis.aclose()
            if self._pool is not None:
                await self._pool.disconnect()

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        for body in bodies:
            if len(body) > self.max_message_bytes:
                raise MessageTooLarge(f"redis: a message of {len(body)} bytes is over max_message_bytes "
                                      f"({self.max_message_bytes})")
        if self._redis is None or self._options is None:
            raise BackendUnavailable("redis: not started")
        if self.state is BackendState.RECONNECTING:
            # Fail at once rather than after a connect timeout: the outbox keeps the messages and
            # tries again when we report CONNECTED.
            raise BackendUnavailable(f"redis: not connected to {self._options.where} (reconnecting)")
        if not bodies:
            return
        try:
            if len(bodies) == 1:
                await self._redis.publish(topic, bodies[0])
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for body in bodies:
                        pipe.publish(topic, body)
                    await pipe.execute()
        except RedisTimeoutError as exc:
            raise PublishTimeout(f"redis: publish timed out after {self._options.socket_timeout}s") from exc
        except (RedisConnectionError, OSError) as exc:
            raise BackendUnavailable(f"redis: publish failed: {describe_error(exc, self._options)}") from exc
        except RedisError as exc:  # refused by Redis itself: an ACL without PUBLISH, say
            raise BackendError(f"redis: publish refused: {describe_error(exc, self._options)}") from exc

    # -- subscribing ---------------------------------------------------------------------------

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        if self._closed:
            raise BackendClosed("redis: backend is closed")
        if self._options is None:
            raise BackendUnavailable("redis: not started")
        channel = topic.encode()
        subscription = RedisSubscription(self, channel, handler)
        subscriptions = self._topics.setdefault(channel, [])
        subscriptions.append(subscription)
        if channel in self._confirmed:
            return subscription
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, []).append(future)
        if len(subscriptions) == 1:  # else a SUBSCRIBE for the channel is on its way already
            await self._send_if_live("SUBSCRIBE", channel)
        try:
            async with asyncio.timeout(self._options.connect_timeout):
                await future
        except TimeoutError:
            await subscription.unsubscribe()
            raise BackendUnavailable(f"redis: subscription to {topic!r} not confirmed within "
                                     f"{self._options.connect_timeout}s") from None
        finally:
            futures = self._pending.get(channel, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                self._pending.pop(channel, None)
        return subscription

    async def _unsubscribe(self, subscription: RedisSubscription) -> None:
        subscriptions = self._topics.get(subscription.channel)
        if subscriptions is None or subscription not in subscriptions:
            return
        subscriptions.remove(subscription)
        if not subscriptions:
            del self._topics[subscription.channel]
            await self._send_if_live("UNSUBSCRIBE", subscription.channel)

    async def _send_if_live(self, *command: str | bytes) -> None:
        """Write on the subscribed connection if it is up; if it is not, the reconnect covers the change."""
        if not self._live or self._conn is None:
            return
        try:
            async with self._write_lock:
                await self._conn.send_command(*command, check_health=False)
        except CONNECTION_ERRORS as exc:
            # The reader sees the same loss and reconnects; it subscribes to what `_topics` holds then.
            log.debug("redis: %s not sent, connection lost: %s", command[0], exc)

    # -- the reader task -----------------------------------------------------------------------

    async def _run(self) -> None:
        """Read the subscribed connection until close(); after any loss, reconnect and resubscribe."""
        while True:  # until close() cancels us
            try:
                await self._read()
            except (BrokerSilent, *CONNECTION_ERRORS) as exc:
                reason = describe_error(exc, self._options)
            except Exception as exc:  # a bug here must not end delivery for the rest of the daemon's life
                log.error("redis: reader failed, reconnecting: %s", exc)
                log.debug("redis: reader failure", exc_info=True)
                reason = "reader failed"
            await self._lost(reason)
            await self._reconnect()

    async def _read(self) -> None:
        assert self._conn is not None and self._options is not None
        conn, interval = self._conn, self._options.health_check_interval
        ping_sent = False
        while True:  # until the connection fails
            # A read that times out returns None and loses nothing: hiredis keeps a partial reply.
            response = await conn.read_response(timeout=interval, disconnect_on_error=False)
            if response is None:
                if ping_sent:
                    raise BrokerSilent(f"no reply to a ping within {interval}s")
                # Silence for a whole interval: ask, so that a dead broker is noticed while idle too.
                async with self._write_lock:
                    await conn.send_command("PING", check_health=False)
                ping_sent = True
                continue
            ping_sent = False
            await self._handle(response)

    async def _handle(self, response: Any) -> None:
        """Act on one reply on the subscribed connection: a message, a (un)subscribe confirmation or a pong."""
        if not isinstance(response, list) or len(response) < 3:
            return  # a pong: it has proved the connection alive
        kind, channel = response[0], response[1]
        if kind == b"message":
            subscriptions = self._topics.get(channel)
            if not subscriptions:
                return  # unsubscribed; Redis sent this before our UNSUBSCRIBE reached it
            message = Message(response[2])
            for subscription in list(subscriptions) if len(subscriptions) > 1 else subscriptions:
                if subscription.active:  # a handler before it may have unsubscribed it
                    await self._deliver(subscription, message)
        elif kind == b"subscribe":
            self._confirmed.add(channel)
            for future in self._pending.get(channel, ()):
                if not future.done():
                    future.set_result(None)
        elif kind == b"unsubscribe":
            self._confirmed.discard(channel)

    async def _deliver(self, subscription: RedisSubscription, message: Message) -> None:
        try:
            await subscription.handler(message)
        except Exception as exc:
            # No REDELIVERY in broadcast mode: the message is gone for this subscriber.
            log.error("redis: subscriber failed, message dropped for it: %s", exc)
            log.debug("redis: subscriber failure", exc_info=True)

    async def _lost(self, reason: str) -> None:
        self._live = False
        self._confirmed.clear()
        log.warning("redis: connection to %s lost (%s); reconnecting", self.where, reason)
        self._set_state(BackendState.RECONNECTING)
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._conn is not None:
                await self._conn.disconnect(nowait=True)
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self._pool is not None:
                # Idle publish connections went down with the broker: drop them now rather than
                # find out on the next publish. Those in use fail by themselves.
                await self._pool.disconnect(inuse_connections=False)

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
                with contextlib.suppress(*CONNECTION_ERRORS):
                    if self._conn is not None:
                        await self._conn.disconnect(nowait=True)
                delay = min(delay * 2, RECONNECT_MAX)
                log.warning("redis: reconnect to %s failed (%s); next attempt within %.1fs", self.where,
                            describe_error(exc, self._options), delay)
        log.info("redis: reconnected to %s after %.1fs (%d attempts); %d channels resubscribed",
                 self.where, loop.time() - lost_at, attempts, len(self._confirmed))
        self._set_state(BackendState.CONNECTED)

    async def _resubscribe(self) -> None:
        assert self._conn is not None and self._options is not None
        conn = self._conn
        async with asyncio.timeout(self._options.connect_timeout):
            await _connect(conn)
            channels = set(self._topics)
            if channels:
                async with self._write_lock:
                    await conn.send_command("SUBSCRIBE", *channels, check_health=False)
                # A message that comes between two confirmations is delivered, not dropped.
                while not channels <= self._confirmed:  # bounded by the timeout
                    await self._handle(await conn.read_response(disconnect_on_error=False))
        self._live = True
        # Subscriptions made or dropped while we reconnected. No await since `_live` was set, so
        # subscribe() and unsubscribe() write every later change themselves.
        added, dropped = set(self._topics) - channels, channels - set(self._topics)
        if added:
            await self._send_if_live("SUBSCRIBE", *added)
        if dropped:
            await self._send_if_live("UNSUBSCRIBE", *dropped)
