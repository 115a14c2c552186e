"""The NATS backend, broadcast mode: core NATS subjects through nats-py.

The subject is the topic (syncar's `--key`, default `feathers-sync`), as
feathers-sync 3.x's nats adapter uses it, and the body is the codec's bytes.
Unlike feathers-sync, which connects anew for every publish, a daemon keeps
one connection for everything.

URI: `nats://[user:password@|token@]host[:port][,host[:port]...][?option=value&...]`,
or `tls://` to require TLS. Options: `tls_ca` (CA bundle file), `tls_cert`
and `tls_key` (client certificate and key files), `tls_hostname` (name to
verify in the server's certificate). User, password and token may be
percent-encoded. See docs/backends/nats.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSub

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

DEFAULT_PORT = 4222
#: First and largest wait between reconnect attempts; each wait is jittered by ±20% so a fleet spreads out.
RECONNECT_WAIT_MIN = 0.25
RECONNECT_WAIT_MAX = 1.0
#: Seconds for the server to confirm a publish or a subscription (nats-py's flush() takes whole seconds).
CONFIRM_TIMEOUT = 5
#: A connection that answers no PING for PING_INTERVAL * MAX_OUTSTANDING_PINGS seconds is dead (half-open TCP).
PING_INTERVAL = 10
MAX_OUTSTANDING_PINGS = 3
#: Seconds between repeated warnings about the same outage or the same slow subscriber.
WARN_EVERY = 30.0
TLS_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "tls_hostname")
CONNECTION_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """What the URI says, split into what nats-py takes; `where` is the URI without secrets, for messages."""

    servers: list[str]
    where: str
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.token) if s]


def parse_uri(uri: str) -> NatsOptions:
    """Split a `nats://` or `tls://` URI into nats-py's connect options.

    Raises:
        BackendError: the URI is malformed or names an unknown option or an unreadable file.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if parts.path not in ("", "/") or parts.fragment:
        raise BackendError("nats: the URI takes no path; put options after '?'")
    servers = []
    for host in hosts.split(","):
        try:
            split = urlsplit(f"//{host}")
            name, port = split.hostname or "localhost", split.port or DEFAULT_PORT
        except ValueError:
            raise BackendError(f"nats: bad host:port {host!r} in the URI") from None
        servers.append(f"{scheme}://[{name}]:{port}" if ":" in name else f"{scheme}://{name}:{port}")
    user = password = token = None
    if userinfo:
        name, colon, secret = userinfo.partition(":")
        if colon:
            user, password = unquote(name), unquote(secret)
        else:
            token = unquote(name)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(TLS_OPTIONS))
    if unknown:
        raise BackendError(f"nats: unknown URI option {unknown[0]!r}; known: {', '.join(TLS_OPTIONS)}")
    tls = None
    if scheme == "tls" or any(options.get(o) for o in ("tls_ca", "tls_cert", "tls_key")):
        tls = _tls_context(options)
    where = ",".join(s.split("://", 1)[1] for s in servers)
    return NatsOptions(servers, where, user, password, token, tls, options.get("tls_hostname") or None)


def _tls_context(options: dict[str, str]) -> ssl.SSLContext:
    if options.get("tls_key") and not options.get("tls_cert"):
        raise BackendError("nats: tls_key needs tls_cert")
    setting = "tls_ca"
    try:
        context = ssl.create_default_context(cafile=options.get("tls_ca") or None)
        if options.get("tls_cert"):
            setting = "tls_cert"
            context.load_cert_chain(options["tls_cert"], options.get("tls_key") or None)
    except (OSError, ssl.SSLError) as exc:
        reason = describe(exc).removeprefix("tls: ")
        raise BackendError(f"nats: {setting}: cannot load {options.get(setting)!r}: {reason}") from None
    return context


def describe(exc: BaseException) -> str:
    """A one-line, lowercase reason for a connection failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower()
    text = str(exc).removeprefix("nats: ").strip("'\" ").lower()
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text:
        return "authorization violation (wrong user, password or token?)"
    return text or type(exc).__name__.lower()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done-callback for a flush nobody waits for any more, so its failure is not reported as unretrieved."""
    if not task.cancelled():
        task.exception()


async def _quietly(closing: Awaitable[None]) -> None:
    """Close a nats-py client, whatever it raises.

    Closing while a reconnect is under way cancels the reconnect task as it awaits the old socket's close,
    and nats-py then awaits that same cancelled future: the CancelledError is nats-py's, not ours. A task
    keeps it apart from a real cancellation of the caller.
    """
    task = asyncio.ensure_future(closing)
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        log.debug("nats: error while closing: %s", task.exception())


class NatsSubscription(Subscription):
    def __init__(self, backend: NatsBackend, topic: str, handler: Handler) -> None:
        self._backend = backend
        self.topic = topic
        self._handler = handler
        self._sub: NatsSub | None = None
        self.active = True

    async def attach(self, client: Client) -> None:
        # nats-py runs one task per subscription that awaits the callback for each message in turn: order is kept.
        self._sub = await client.subscribe(self.topic, cb=self._deliver)

    async def _deliver(self, msg: Msg) -> None:
        try:
            await self._handler(Message(msg.data))
        except Exception as exc:
            log.error("nats: subscriber failed, message dropped: %s", exc)
            log.debug("nats: subscriber failure", exc_info=True)

    async def unsubscribe(self) -> None:
        if not self.active:
            return
        self.active = False
        self._backend.forget(self)
        sub, self._sub = self._sub, None
        if sub is not None:
            # Closed or reconnecting: nats-py drops the subscription locally and will not restore it.
            with contextlib.suppress(*CONNECTION_ERRORS):
                await sub.unsubscribe()


class NatsBackend(Backend):
    """Core NATS pub/sub on one long-lived connection; reconnects forever once the first connect worked."""

    name: ClassVar[str] = "nats"
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.ORDERED, Feature.CONFIRMS})

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self.max_message_bytes = 1024 * 1024  # the NATS default until the server says otherwise
        self._client: Client | None = None
        self._options: NatsOptions | None = None
        self._subscriptions: list[NatsSubscription] = []
        self._closing = False
        # Resolved when the current connection is lost, so a publish waiting for its confirmation fails at once.
        self._lost: asyncio.Future[None] | None = None
        self._revive_task: asyncio.Task[None] | None = None
        self._failures = 0
        self._warned_at = -math.inf
        self._slow_warned_at = -math.inf

    @property
    def where(self) -> str:
        return self._options.where if self._options else "nats"

    async def start(self) -> None:
        if self._closing:
            raise BackendClosed("nats: backend is closed")
        self._options = parse_uri(self.config.uri)
        self._client = await self._connect()
        log.info("nats: connected to %s (max payload %d bytes)", self.where, self.max_message_bytes)
        self._set_state(BackendState.CONNECTED)

    async def _connect(self) -> Client:
        """One connection, or BackendUnavailable once every server has failed once."""
        assert self._options is not None
        options = self._options
        client = Client()
        first_errors: list[BaseException] = []
        all_failed = asyncio.Event()

        # Callbacks from a client that is not (or no longer) the current one are ignored, except the errors
        # of the first connect, which decide when to give up.
        async def on_error(exc: Exception) -> None:
            if self._client is client:
                await self._on_error(client, exc)
            elif not client.is_connected:
                first_errors.append(exc)
                if len(first_errors) >= len(options.servers):
                    all_failed.set()

        async def on_disconnected() -> None:
            if self._client is client:
                await self._on_disconnected()

        async def on_reconnected() -> None:
            if self._client is client:
                await self._on_reconnected(client)

        async def on_closed() -> None:
            if self._client is client:
                await self._on_closed()

        # Reconnects are allowed and unlimited from the start: nats-py reads these options only at connect().
        # Its first connect would then retry forever, so we stop it ourselves once each server failed once.
        connect = asyncio.ensure_future(client.connect(
            servers=options.servers, name=self.config.instance_id, user=options.user, password=options.password,
            token=options.token, tls=options.tls, tls_hostname=options.tls_hostname,
            connect_timeout=max(1, math.ceil(self.config.connect_timeout)), allow_reconnect=True,
            # nats-py annotates the wait as int but only sleeps on it; a float gives the jitter.
            max_reconnect_attempts=-1, reconnect_time_wait=self._next_wait(),  # type: ignore[arg-type]
            ping_interval=PING_INTERVAL, max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            # No buffering while disconnected: publish() raises at once and the core's outbox keeps the message.
            pending_size=0,
            error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected, closed_cb=on_closed,
        ))
        failed = asyncio.ensure_future(all_failed.wait())
        try:
            await asyncio.wait({connect, failed}, timeout=self.config.connect_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            if not connect.done():
                connect.cancel()
                with contextlib.suppress(asyncio.CancelledError, *CONNECTION_ERRORS):
                    await connect
        error: BaseException | None = None
        if connect.cancelled() or connect.exception() is not None:
            error = (None if connect.cancelled() else connect.exception()) or (
                first_errors[-1] if first_errors else TimeoutError())
            error = BackendUnavailable(f"nats: cannot connect to {self.where}: {self._clean(describe(error))}")
        elif not self._tls_ok(client):
            error = BackendUnavailable(f"nats: {self.where} did not offer TLS, which the URI requires")
        if error is not None:
            await _quietly(client.close())
            raise error
        self.max_message_bytes = client.max_payload
        self._lost = asyncio.get_running_loop().create_future()
        return client

    def _clean(self, text: str) -> str:
        for secret in self._options.secrets if self._options else []:
            text = text.replace(secret, "***")
        return text

    def _tls_ok(self, client: Client) -> bool:
        # nats-py upgrades to TLS only when the server's INFO asks for it, even for tls://: refuse plain text.
        assert self._options is not None
        server_info: dict[str, Any] = getattr(client, "_server_info", {})
        return self._options.tls is None or bool(server_info.get("tls_required"))

    def _next_wait(self) -> float:
        base = min(RECONNECT_WAIT_MIN * (1 << min(self._failures, 8)), RECONNECT_WAIT_MAX)
        return base * random.uniform(0.8, 1.2)

    # -- nats-py callbacks -------------------------------------------------------------------------

    async def _on_error(self, client: Client, exc: Exception) -> None:
        now = time.monotonic()
        if isinstance(exc, nats.errors.SlowConsumerError):
            if now - self._slow_warned_at > WARN_EVERY:
                self._slow_warned_at = now
                log.warning("nats: subscriber too slow, nats-py dropped messages for it")
            return
        if client.is_reconnecting and not self._closing:
            self._failures += 1
            wait = self._next_wait()
            # nats-py waits options["reconnect_time_wait"] before its next attempt: jitter it each time.
            client.options["reconnect_time_wait"] = wait
            level = logging.WARNING if now - self._warned_at > WARN_EVERY else logging.DEBUG
            if level == logging.WARNING:
                self._warned_at = now
            log.log(level, "nats: reconnect attempt %d to %s failed: %s; next in %.2fs", self._failures,
                    self.where, self._clean(describe(exc)), wait)
            return
        log.debug("nats: %s", self._clean(describe(exc)))

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self.state is BackendState.CONNECTED:
            log.warning("nats: connection to %s lost; reconnecting", self.where)
        self._set_state(BackendState.RECONNECTING)

    async def _on_reconnected(self, client: Client) -> None:
        if self._closing:
            return
        if not self._tls_ok(client):
            log.error("nats: %s did not offer TLS, which the URI requires; reconnecting", self.where)
            await client.force_reconnect()
            return
        self._failures = 0
        self._warned_at = -math.inf
        client.options["reconnect_time_wait"] = self._next_wait()
        self.max_message_bytes = client.max_payload
        self._lost = asyncio.get_running_loop().create_future()
        log.info("nats: reconnected to %s", self.where)
        self._set_state(BackendState.CONNECTED)

    async def _on_closed(self) -> None:
        if self._closing:
            return
        # nats-py gives up on a connection after some server errors (an -ERR it does not know): start afresh.
        log.error("nats: connection to %s closed by the client library; connecting again", self.where)
        await self._on_disconnected()
        if self._revive_task is None or self._revive_task.done():
            self._revive_task = asyncio.create_task(self._revive(), name="syncar-nats-revive")

    async def _revive(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._next_wait())
            try:
                client = await self._connect()
                for subscription in self._subscriptions:
                    await subscription.attach(client)
                await self._confirm(client, self._lost)
            except (BackendError, *CONNECTION_ERRORS) as exc:
                self._failures += 1
                log.debug("nats: new connection failed: %s", exc)
                continue
            self._client = client
            self._failures = 0
            log.info("nats: connected to %s again", self.where)
            self._set_state(BackendState.CONNECTED)
            return

    # -- the Backend interface ------------------------------------------------------------------------

    def _usable(self) -> Client:
        if self._closing or self.state is BackendState.CLOSED:
            raise BackendClosed("nats: backend is closed")
        client = self._client
        if client is None or not client.is_connected or self.state is not BackendState.CONNECTED:
            raise BackendUnavailable(f"nats: not connected to {self.where}")
        return client

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        client = self._usable()
        for body in bodies:
            if len(body) > client.max_payload:
                raise MessageTooLarge(f"nats: message of {len(body)} bytes is over the server's max_payload of "
                                      f"{client.max_payload} bytes")
        lost = self._lost
        try:
            for body in bodies:
                await client.publish(topic, body)
        except nats.errors.MaxPayloadError as exc:
            raise MessageTooLarge(f"nats: message is over the server's max_payload of {client.max_payload} "
                                  "bytes") from exc
        except nats.errors.BadSubjectError as exc:
            raise BackendError(f"nats: {topic!r} is not a valid subject") from exc
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"nats: publish to {self.where} failed: {describe(exc)}") from exc
        await self._confirm(client, lost)

    async def _confirm(self, client: Client, lost: asyncio.Future[None] | None) -> None:
        """Return once the server has processed everything written so far on `client`.

        Raises:
            BackendUnavailable: the connection was lost first.
            PublishTimeout: no answer within CONFIRM_TIMEOUT; the connection is replaced.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIRM_TIMEOUT
        # nats-py's flush() writes its PING straight to the socket, ahead of commands still queued for its
        # flusher task; the PONG would then prove nothing about them. Let the flusher write them first.
        delay = 0.0
        while client.pending_data_size and client.is_connected:
            if loop.time() > deadline:
                raise PublishTimeout(f"nats: could not write to {self.where} within {CONFIRM_TIMEOUT}s")
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, 0.001), 0.02)
        flush = asyncio.ensure_future(client.flush(CONFIRM_TIMEOUT))
        waiting: set[asyncio.Future[Any]] = {flush} if lost is None else {flush, lost}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not flush.done():
                # Cancelling a flush leaves a stale PONG waiter in nats-py, which then breaks its read loop:
                # let it finish on its own (a lost connection resets the waiters).
                flush.add_done_callback(_retrieve)
        if not flush.done():
            raise BackendUnavailable(f"nats: connection to {self.where} lost before the server confirmed")
        error = flush.exception()
        if isinstance(error, nats.errors.FlushTimeoutError):
            # The connection is silent but not closed (half-open TCP, a stuck server): start a new one.
            await client.force_reconnect()
            raise PublishTimeout(f"nats: {self.where} did not confirm within {CONFIRM_TIMEOUT}s; reconnecting")
        if error is not None:
            raise BackendUnavailable(f"nats: {self.where} did not confirm: {describe(error)}") from error

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        client = self._usable()
        subscription = NatsSubscription(self, topic, handler)
        try:
            await subscription.attach(client)
        except nats.errors.BadSubjectError as exc:
            raise BackendError(f"nats: {topic!r} is not a valid subject") from exc
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"nats: subscribe on {self.where} failed: {describe(exc)}") from exc
        self._subscriptions.append(subscription)
        try:
            await self._confirm(client, self._lost)
        except BackendError:
            # nats-py would restore it after a reconnect, but the caller is told it failed and may retry.
            await subscription.unsubscribe()
            raise
        return subscription

    def forget(self, subscription: NatsSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._revive_task is not None:
            self._revive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._revive_task
        client, self._client = self._client, None
        # Every publish was confirmed before it returned, so there is nothing to drain on the way out;
        # messages nats-py still holds for a subscriber are dropped (broadcast mode is at-most-once).
        if client is not None and not client.is_closed:
            await _quietly(client.close())
        self._subscriptions.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._set_state(BackendState.CLOSED)
