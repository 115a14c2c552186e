"""The connection both NATS backend classes share: connect, reconnect, confirm, close.

`NatsConnection` owns the one nats-py client of a daemon: the first connect (fail fast, each server tried once),
nats-py's reconnects and the client that replaces one nats-py gave up, the state reported to the core, and the
confirmation that the server processed what was written (a PING's PONG). It knows nothing of subjects or streams:
`backends.nats.NatsBackend` (core subjects, broadcast mode) and `NatsJetStreamBackend` (JetStream, durable mode)
add publish() and subscribe(), and say through two hooks what their subscriptions need after a reconnect.
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
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client

from backends.base import (
    Backend,
    BackendClosed,
    BackendConfig,
    BackendError,
    BackendRefused,
    BackendState,
    BackendUnavailable,
    PublishTimeout,
    PublishUnconfirmed,
    StateCallback,
    Subscription,
)
from backends.deadlines import Deadlines
from backends.nats_common import CONNECTION_ERRORS, describe, netloc, parse_uri, settle
from backends.nats_internals import offered_tls, read_in_bulk, write_with_ping
from backends.tls import tls_refused
from sidecar.backoff import Backoff
from sidecar.logging import Outage, RateLimitedLogger

# The connection's lines are the backend's: "backends.nats", the name operators filter on (like backends.redis).
log = logging.getLogger("backends.nats")

#: Seconds for the server to confirm a publish or a subscription (nats-py's flush() takes whole seconds).
CONFIRM_TIMEOUT = 5
#: A connection that answers no PING for PING_INTERVAL * MAX_OUTSTANDING_PINGS seconds is dead (half-open TCP).
PING_INTERVAL = 10
MAX_OUTSTANDING_PINGS = 3
#: Seconds between two warnings about the same slow subscriber.
WARN_EVERY = 30.0
slow_warnings = RateLimitedLogger(log, WARN_EVERY)

S = TypeVar("S", bound=Subscription)


class NatsConnection(Backend, Generic[S]):
    """NATS on one long-lived connection; reconnects forever once the first connect worked.

    A subclass serves one mode, with subscriptions of type S: it implements publish() and subscribe() on
    `_usable()` / `_sized()`, keeps its subscriptions in `_subscriptions` (each told to `_forget` itself when it
    stops), and says what they need in three hooks: `_reattach()` (a new client replaced the one nats-py gave up),
    `_resume()` (connected again) and `_drain()` (closing).
    """

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self.max_message_bytes = 1024 * 1024  # the NATS default, until the server says otherwise
        self._client: Client | None = None
        self._options: dict[str, Any] = {}
        self._subscriptions: list[S] = []
        self._closing = False
        # Resolved when the current connection is lost, so that a publish awaiting its confirmation fails at once.
        self._lost: asyncio.Future[None] | None = None
        # Bounds each wait for a PONG with one timer among them all, not one each (backends/deadlines.py).
        self._confirms = Deadlines(CONFIRM_TIMEOUT)
        self._confirming: set[asyncio.Future[bool]] = set()  # the PONGs awaited
        self._revive_task: asyncio.Task[None] | None = None
        self._backoff = Backoff(cap=config.reconnect_max_delay)
        self._outage = Outage(log)
        self.where = "nats"  # the servers, without credentials, for messages

    @property
    def node(self) -> str | None:
        """The server of the current connection (nats-py's connected_url), as host:port."""
        client = self._client
        url = None if client is None or self.state is not BackendState.CONNECTED else client.connected_url
        return None if url is None else netloc(url)

    def _address(self, client: Client) -> str:
        """The server `client` is connected to, for messages: of a cluster, the node, not the URI's list."""
        url = client.connected_url
        return self.where if url is None else netloc(url)

    @property
    def members(self) -> tuple[str, ...]:
        """The servers of the URI and those the cluster announced (nats-py's server pool, discovery on)."""
        return () if self._client is None else tuple(netloc(url) for url in self._client.servers)

    def _forget(self, subscription: S) -> None:
        """A subscription's stop: it is not restored any more."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    async def _reattach(self, client: Client) -> None:
        """Subscribe again on `client`, which replaced a client nats-py gave up; before the state is CONNECTED."""

    def _resume(self) -> None:
        """Connected again, on the same client or a new one: restore what nats-py does not restore by itself."""

    async def _drain(self, client: Client | None) -> None:
        """Closing: finish with the subscriptions while `client` (if any) is still open."""

    async def start(self) -> None:
        if self._closing:
            raise BackendClosed("nats: backend is closed")
        self.where, self._options = parse_uri(self.config.uri)
        self._client = await self._connect()
        log.info(
            "nats: connected to %s (%s mode, max payload %d bytes)",
            self._address(self._client),
            self.config.mode,
            self.max_message_bytes,
        )
        self._set_state(BackendState.CONNECTED)

    async def _connect(self) -> Client:
        """A new connection, or BackendUnavailable once each server has failed once."""
        client = Client()
        read_in_bulk(client)
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
        connect = asyncio.ensure_future(
            client.connect(
                **self._options,
                name=self.config.instance_id,
                allow_reconnect=True,
                connect_timeout=max(1, math.ceil(self.config.connect_timeout)),
                # nats-py annotates the wait as int but only sleeps on it; a float carries the jitter.
                max_reconnect_attempts=-1,
                reconnect_time_wait=self._backoff.next(),  # type: ignore[arg-type]
                ping_interval=PING_INTERVAL,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                # No buffering while disconnected: publish() raises at once, and the core's outbox keeps the message.
                pending_size=0,
                # Broadcast mode: the server does not send us back our own batches, which we would only drop.
                no_echo=not self.broker_echoes,
                error_cb=on_error,
                disconnected_cb=partial(self._if_current, client, self._on_disconnected),
                reconnected_cb=partial(self._if_current, client, self._on_reconnected),
                closed_cb=partial(self._if_current, client, self._on_closed),
            )
        )
        failed, error = asyncio.ensure_future(all_failed.wait()), None
        try:
            await asyncio.wait(
                {connect, failed}, timeout=self.config.connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:  # also when we are cancelled: the client must not live on
            failed.cancel()
            connect.cancel()  # a no-op once it is done
            await settle(connect)
            if connect.cancelled() or connect.exception() is not None:
                cause = (None if connect.cancelled() else connect.exception()) or (first_errors or [TimeoutError()])[-1]
                error = self._refusal(cause)
            elif not self._tls_ok(client):
                error = BackendRefused(f"nats: {self.where} did not offer TLS, which the URI requires")
            if error is not None:
                await settle(client.close())
        if error is not None:
            raise error
        self.max_message_bytes = client.max_payload
        self._lost = asyncio.get_running_loop().create_future()
        return client

    def _refusal(self, cause: BaseException) -> BackendError:
        """The error a failed first connect raises: refused (settings) or unavailable (an outage)."""
        reason = describe(cause, self._secrets())
        # The server answers wrong credentials with -ERR and closes at once; the -ERR is often lost in the
        # reset (over TLS, nearly always): with credentials given, a reset in the handshake is a refusal.
        reset = isinstance(cause, ConnectionResetError | BrokenPipeError) and bool(
            self._options["user"] or self._options["token"]
        )
        if reset:
            reason += " (wrong user, password or token?)"
        refused = (
            reset
            or isinstance(cause, nats.errors.AuthorizationError)
            or reason.startswith("authorization violation")
            or tls_refused(cause)
        )
        return (BackendRefused if refused else BackendUnavailable)(f"nats: cannot connect to {self.where}: {reason}")

    def _secrets(self) -> tuple[str | None, str | None]:
        """What a reason must not quote: a server may echo what it was sent."""
        return self._options.get("password"), self._options.get("token")

    def _tls_ok(self, client: Client) -> bool:
        # nats-py upgrades to TLS only when the server's INFO asks for it, even for tls://: refuse plain text.
        return self._options.get("tls") is None or offered_tls(client)

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
            self._outage.failed(
                "nats: reconnect to %s failed (%s); next attempt in %.1fs",
                self.where,
                describe(exc, self._secrets()),
                wait,
            )
        else:
            log.debug("nats: %s", describe(exc, self._secrets()))

    def _settle_confirmations(self) -> None:
        """The connection is lost: resolve `_lost`, and end the waits for PONGs that will never come."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        for pong in self._confirming:
            if not pong.done():
                pong.set_result(False)

    async def _on_disconnected(self, _: Client | None = None) -> None:
        self._settle_confirmations()
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
        self._resume()

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
                await self._reattach(client)
                await self._confirm(client, self._lost)
            if client.is_connected and self.state is BackendState.RECONNECTING:
                self._reconnected(client)
                self._set_state(BackendState.CONNECTED)
                self._resume()
            return

    def _reconnected(self, client: Client) -> None:
        self._outage.ended(
            "nats: reconnected to %s after %.1fs (%d failed attempts)",
            self._address(client),
            self._outage.seconds,
            self._outage.failures,
        )
        self._backoff.reset()
        client.options["reconnect_time_wait"] = self._backoff.next()

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

    def _sized(self, bodies: Sequence[bytes]) -> Client:
        """The connection to publish `bodies` on, once each is within the server's max_payload."""
        client = self._usable()
        self._check_sizes(bodies, client.max_payload, "the server's max_payload")
        return client

    async def _confirm(
        self, client: Client, lost: asyncio.Future[None] | None, topic: str = "", bodies: Sequence[bytes] = ()
    ) -> None:
        """Publish `bodies` on `topic` (if any), and return once the server has processed them and everything written
        before on `client`, or raise."""
        unconfirmed = PublishUnconfirmed(f"nats: connection to {self.where} lost before the server confirmed")
        # Nothing of `bodies` written yet: the caller may send them again, whatever the codec.
        unsent = BackendUnavailable(f"nats: publish to {self.where} failed: not connected") if bodies else unconfirmed
        # nats-py cancels its reader before it reports a disconnect: a PING then would never get its PONG.
        if not client.is_connected or (lost is not None and lost.done()):
            raise unsent
        try:
            pong = write_with_ping(client, topic, bodies)
        except nats.errors.BadSubjectError as exc:  # not a subject a subscribe() took
            raise BackendError(f"nats: {topic!r} is not a valid subject") from exc
        except CONNECTION_ERRORS as exc:
            raise unsent from exc
        # The PONG awaited directly, bounded by the timer all confirmations share; a lost connection settles it with
        # False (_settle_confirmations). asyncio.wait(timeout=...) made a timer (under uvloop a turn of the loop more),
        # a future, callbacks on both futures and a turn of the loop for them, per batch.
        confirmed = False
        self._confirming.add(pong)
        try:
            async with self._confirms:
                confirmed = await pong
        except TimeoutError:
            pass
        finally:
            self._confirming.discard(pong)
        if confirmed:
            return
        if not client.is_connected or (lost is not None and lost.done()):
            raise unconfirmed
        # Silent but not closed (half-open TCP, a stuck server): this connection is of no use any more.
        await client.force_reconnect()
        raise PublishTimeout(f"nats: {self.where} did not confirm within {CONFIRM_TIMEOUT}s; reconnecting")

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._revive_task is not None:
            self._revive_task.cancel()
            await settle(self._revive_task)
        client, self._client = self._client, None
        await self._drain(client)
        if client is not None and not client.is_closed:
            await settle(client.close())
        self._settle_confirmations()
        self._confirms.close()
        self._set_state(BackendState.CLOSED)
