"""The NATS backend: core NATS subjects (broadcast mode) or JetStream (durable mode), on one connection per daemon.

Broadcast: the subject is the topic (`--key`, default `feathers-sync`), as in feathers-sync 3.x's nats adapter.
Durable: a stream per topic and a durable consumer per instance; see backends/nats_jetstream.py.
URI: `nats://` or `tls://`, then `[user:password@|token@]host[:port][,host[:port]...]`, then optionally
`?tls_ca=FILE&tls_cert=FILE&tls_key=FILE&tls_hostname=NAME`. See docs/backends/nats.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, ClassVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSub

from backends.base import (
    Backend,
    BackendClosed,
    BackendConfig,
    BackendError,
    BackendRefused,
    BackendState,
    BackendUnavailable,
    Feature,
    Handler,
    Message,
    MessageTooLarge,
    Mode,
    PublishTimeout,
    PublishUnconfirmed,
    StateCallback,
    Subscription,
    tls_refused,
)
from backends.nats_common import CONNECTION_ERRORS, describe, parse_uri, settle, write_with_ping
from backends.nats_jetstream import DurableSubscription, JetStreamPublisher
from sidecar.backoff import Backoff
from sidecar.logging import Outage, RateLimitedLogger

__all__ = ["NatsBackend", "describe", "parse_uri"]

log = logging.getLogger(__name__)

#: Seconds for the server to confirm a publish or a subscription (nats-py's flush() takes whole seconds).
CONFIRM_TIMEOUT = 5
#: A connection that answers no PING for PING_INTERVAL * MAX_OUTSTANDING_PINGS seconds is dead (half-open TCP).
PING_INTERVAL = 10
MAX_OUTSTANDING_PINGS = 3
#: Seconds between two warnings about the same slow subscriber.
WARN_EVERY = 30.0
slow_warnings = RateLimitedLogger(log, WARN_EVERY)


class NatsSubscription(Subscription):
    def __init__(self, backend: NatsBackend, topic: str, handler: Handler) -> None:
        self._backend = backend
        self.topic = topic
        self._handler = handler
        self._sub: NatsSub | None = None

    async def attach(self, client: Client) -> None:
        # nats-py runs one task per subscription, which awaits the callback for each message in turn: in order.
        self._sub = await client.subscribe(self.topic, cb=self._deliver)

    async def _deliver(self, msg: Msg) -> None:
        try:
            await self._handler(Message(msg.data))
        except Exception as exc:
            log.error("nats: subscriber failed, message dropped: %s", exc)
            log.debug("nats: subscriber failure", exc_info=True)

    async def unsubscribe(self) -> None:
        if self in self._backend._subscriptions:
            self._backend._subscriptions.remove(self)
        sub, self._sub = self._sub, None
        if sub is not None:
            # Closed or reconnecting: nats-py drops the subscription locally and does not restore it.
            with contextlib.suppress(*CONNECTION_ERRORS):
                await sub.unsubscribe()


class NatsBackend(Backend):
    """NATS on one long-lived connection; reconnects forever once the first connect worked."""

    name: ClassVar[str] = "nats"
    #: Core NATS can leave out what our own connection published (no_echo); a JetStream consumer gets everything.
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.NO_ECHO})

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self.max_message_bytes = 1024 * 1024  # the NATS default, until the server says otherwise
        self._client: Client | None = None
        self._options: dict[str, Any] = {}
        self._subscriptions: list[NatsSubscription | DurableSubscription] = []
        self._publisher = JetStreamPublisher(self) if config.mode is Mode.DURABLE else None
        self._closing = False
        # Resolved when the current connection is lost, so that a publish awaiting its confirmation fails at once.
        self._lost: asyncio.Future[None] | None = None
        self._revive_task: asyncio.Task[None] | None = None
        self._backoff = Backoff(cap=config.reconnect_max_delay)
        self._outage = Outage(log)
        self.where = "nats"  # the servers, without credentials, for messages

    async def start(self) -> None:
        if self._closing:
            raise BackendClosed("nats: backend is closed")
        self.where, self._options = parse_uri(self.config.uri)
        self._client = await self._connect()
        log.info("nats: connected to %s (max payload %d bytes)", self.where, self.max_message_bytes)
        self._set_state(BackendState.CONNECTED)

    async def _connect(self) -> Client:
        """A new connection, or BackendUnavailable once each server has failed once."""
        client = Client()
        first_errors: list[BaseException] = []
        all_failed = asyncio.Event()

        # The errors of the first connect decide when to give up; later ones are the backend's.
        async def on_error(exc: Exception) -> None:
            if self._client is client:
                await self._on_error(client, exc)
            elif not client.is_connected:
                first_errors.append(exc)
                if len(first_errors) >= len(self._options["servers"]):
                    all_failed.set()

        # nats-py reads the reconnect options only in connect(), so they are unlimited from the start; its
        # first connect would then retry forever, and we stop it ourselves once each server failed once.
        connect = asyncio.ensure_future(client.connect(
            **self._options, name=self.config.instance_id, allow_reconnect=True,
            connect_timeout=max(1, math.ceil(self.config.connect_timeout)),
            # nats-py annotates the wait as int but only sleeps on it; a float carries the jitter.
            max_reconnect_attempts=-1, reconnect_time_wait=self._backoff.next(),  # type: ignore[arg-type]
            ping_interval=PING_INTERVAL, max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            # No buffering while disconnected: publish() raises at once, and the core's outbox keeps the message.
            pending_size=0,
            # Broadcast mode: the server does not send us back our own batches, which we would only drop.
            no_echo=not self.broker_echoes,
            error_cb=on_error, disconnected_cb=partial(self._if_current, client, self._on_disconnected),
            reconnected_cb=partial(self._if_current, client, self._on_reconnected),
            closed_cb=partial(self._if_current, client, self._on_closed),
        ))
        failed, error = asyncio.ensure_future(all_failed.wait()), None
        try:
            await asyncio.wait({connect, failed}, timeout=self.config.connect_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when we are cancelled: the client must not live on
            failed.cancel()
            connect.cancel()  # a no-op once it is done
            await settle(connect)
            if connect.cancelled() or connect.exception() is not None:
                cause = (None if connect.cancelled() else connect.exception()) or (first_errors or [TimeoutError()])[-1]
                reason = self._clean(describe(cause))
                # The server answers wrong credentials with -ERR and closes at once; the -ERR is often lost in the
                # reset (over TLS, nearly always): with credentials given, a reset in the handshake is a refusal.
                reset = isinstance(cause, ConnectionResetError | BrokenPipeError) and bool(
                    self._options["user"] or self._options["token"])
                if reset:
                    reason += " (wrong user, password or token?)"
                refused = reset or isinstance(cause, nats.errors.AuthorizationError) or reason.startswith(
                    "authorization violation") or tls_refused(cause)
                error = (BackendRefused if refused else BackendUnavailable)(
                    f"nats: cannot connect to {self.where}: {reason}")
            elif not self._tls_ok(client):
                error = BackendRefused(f"nats: {self.where} did not offer TLS, which the URI requires")
            if error is not None:
                await settle(client.close())
        if error is not None:
            raise error
        self.max_message_bytes = client.max_payload
        self._lost = asyncio.get_running_loop().create_future()
        return client

    def _clean(self, text: str) -> str:
        for secret in (self._options.get("password"), self._options.get("token")):
            text = text.replace(secret, "***") if secret else text  # a server may echo what it was sent
        return text

    def _tls_ok(self, client: Client) -> bool:
        # nats-py upgrades to TLS only when the server's INFO asks for it, even for tls://: refuse plain text.
        server_info: dict[str, Any] = getattr(client, "_server_info", {})
        return self._options.get("tls") is None or bool(server_info.get("tls_required"))

    async def _if_current(self, client: Client, callback: Callable[[Client], Awaitable[None]]) -> None:
        """Pass on a nats-py callback unless it comes from a client that is not, or no longer, ours."""
        if self._client is client and not self._closing:
            await callback(client)

    async def _on_error(self, client: Client, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            slow_warnings.warning("slow", "nats: subscriber too slow, nats-py dropped messages for it")
        elif self.state is BackendState.RECONNECTING:  # nats-py's own status says CONNECTING during the handshake
            # nats-py sleeps options["reconnect_time_wait"] before its next attempt: back off, jittered, every time.
            client.options["reconnect_time_wait"] = wait = self._backoff.next()
            self._outage.failed("nats: reconnect to %s failed (%s); next attempt in %.1fs", self.where,
                                self._clean(describe(exc)), wait)
        else:
            log.debug("nats: %s", self._clean(describe(exc)))

    async def _on_disconnected(self, _: Client | None = None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self.state is BackendState.CONNECTED:
            self._outage.began("nats: connection to %s lost; reconnecting", self.where)
        self._set_state(BackendState.RECONNECTING)

    async def _on_reconnected(self, client: Client) -> None:
        if not self._tls_ok(client):
            log.error("nats: %s did not offer TLS, which the URI requires; reconnecting", self.where)
            return await client.force_reconnect()
        self._reconnected(client)
        self.max_message_bytes = client.max_payload
        self._lost = asyncio.get_running_loop().create_future()
        self._set_state(BackendState.CONNECTED)
        self._resume_durable()

    async def _on_closed(self, _: Client) -> None:
        # nats-py gives up a connection after some server errors (an -ERR it does not expect): start afresh.
        log.error("nats: connection to %s closed by nats-py; connecting again", self.where)
        await self._on_disconnected()
        if self._revive_task is None or self._revive_task.done():
            self._revive_task = asyncio.create_task(self._revive(), name="syncar-nats-revive")

    async def _revive(self) -> None:
        old = self._client
        assert old is not None
        while not self._closing:
            await asyncio.sleep(old.options["reconnect_time_wait"])
            try:
                client = await self._connect()
            except BackendError as exc:
                await self._on_error(old, exc)  # counts, jitters the next wait, warns now and then
                continue
            # From here on the new client's own callbacks report its losses and restore its subscriptions.
            self._client = client
            with contextlib.suppress(BackendError, *CONNECTION_ERRORS):
                for subscription in self._subscriptions:
                    if isinstance(subscription, NatsSubscription):
                        await subscription.attach(client)
                await self._confirm(client, self._lost)
            if client.is_connected and self.state is BackendState.RECONNECTING:
                self._reconnected(client)
                self._set_state(BackendState.CONNECTED)
                self._resume_durable()
            return

    def _reconnected(self, client: Client) -> None:
        self._outage.ended("nats: reconnected to %s after %.1fs (%d failed attempts)", self.where,
                           self._outage.seconds, self._outage.failures)
        self._backoff.reset()
        client.options["reconnect_time_wait"] = self._backoff.next()

    def _resume_durable(self) -> None:
        # In the background: nothing waits in the stream meanwhile, and JetStream may need a moment after a restart.
        for subscription in self._subscriptions:
            if isinstance(subscription, DurableSubscription):
                subscription.restore_soon()

    def current_client(self) -> Client | None:
        """The connection, while it is up."""
        try:
            return self._usable()
        except BackendError:
            return None

    def _usable(self) -> Client:
        if self._closing:
            raise BackendClosed("nats: backend is closed")
        if self._client is None or not self._client.is_connected or self.state is not BackendState.CONNECTED:
            raise BackendUnavailable(f"nats: not connected to {self.where}")
        return self._client

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        client = self._usable()
        limit, size = client.max_payload, max(map(len, bodies), default=0)
        if size > limit:
            raise MessageTooLarge(f"nats: message of {size} bytes is over the server's max_payload of {limit} bytes")
        lost = self._lost
        if self._publisher is not None:
            return await self._publisher.publish(client, topic, bodies, lost)
        taken = 0
        try:
            for body in bodies:
                await client.publish(topic, body)
                taken += 1
        except CONNECTION_ERRORS as exc:  # a bad subject never gets here: subscribe() refused it at startup
            # nats-py keeps what it took before the loss and writes it to the next connection itself.
            error = PublishUnconfirmed if taken else BackendUnavailable
            raise error(f"nats: publish to {self.where} failed: {describe(exc)}") from exc
        await self._confirm(client, lost)

    async def _confirm(self, client: Client, lost: asyncio.Future[None] | None) -> None:
        """Return once the server has processed everything written so far on `client`, or raise."""
        unconfirmed = PublishUnconfirmed(f"nats: connection to {self.where} lost before the server confirmed")
        # nats-py cancels its reader before it reports a disconnect: a PING then would never get its PONG.
        if not client.is_connected or (lost is not None and lost.done()):
            raise unconfirmed
        try:
            pong = write_with_ping(client)
        except CONNECTION_ERRORS as exc:
            raise unconfirmed from exc
        waiting: set[asyncio.Future[Any]] = {pong} if lost is None else {pong, lost}
        await asyncio.wait(waiting, timeout=CONFIRM_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if pong.done():  # only a PONG resolves it
            return
        if not client.is_connected or (lost is not None and lost.done()):
            raise unconfirmed
        # Silent but not closed (half-open TCP, a stuck server): this connection is of no use any more.
        await client.force_reconnect()
        raise PublishTimeout(f"nats: {self.where} did not confirm within {CONFIRM_TIMEOUT}s; reconnecting")

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        client = self._usable()
        if self._publisher is not None:
            durable = DurableSubscription(self, topic, handler)
            try:
                await durable.attach(client)
            except BackendError:
                await durable.unsubscribe()
                raise
            self._subscriptions.append(durable)
            return durable
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

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._revive_task is not None:
            self._revive_task.cancel()
            await settle(self._revive_task)
        client, self._client = self._client, None
        for subscription in list(self._subscriptions):
            if isinstance(subscription, DurableSubscription):
                await subscription.unsubscribe()
        if self._publisher is not None and client is not None and client.is_connected:
            # The last acknowledgements must reach the server, or their messages come again next time.
            with contextlib.suppress(BackendError):
                await self._confirm(client, self._lost)
        # Every publish was confirmed before it returned, so there is nothing to drain on the way out;
        # in broadcast mode, messages nats-py still holds for a subscriber are dropped (at-most-once).
        if client is not None and not client.is_closed:
            await settle(client.close())
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._set_state(BackendState.CLOSED)


class NatsJetStreamBackend(NatsBackend):
    """Durable mode: JetStream (`backends.nats_jetstream`)."""

    features: ClassVar[frozenset[Feature]] = frozenset({Feature.DURABLE})
