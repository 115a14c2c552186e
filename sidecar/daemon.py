"""The daemon: claim the socket, connect to the broker, serve the socket until told to stop; shut down in order.

A broker that cannot be reached for now does not stop the start: the daemon serves its apps without it (local
delivery, publishes held in the outbox, `broker: down` in `welcome` and `status`) and connects in the background.
One that refuses us (credentials, TLS, permissions) does, as does `--require-broker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from backends import load_backend
from backends.base import Backend, BackendClosed, BackendError, BackendState, Mode, Subscription
from sidecar import __version__, protocol
from sidecar.backoff import Backoff
from sidecar.codec import CODECS, SyncarCodec
from sidecar.config import Settings
from sidecar.connection import Connection, Limits
from sidecar.descriptors import fit_clients, raise_soft_limit
from sidecar.errors import ConfigError, StartupError
from sidecar.fleet import Fleet, announcement_of, announcing_bus
from sidecar.gaps import GapTracker
from sidecar.http import MAX_HTTP_CONNECTIONS, HttpServer
from sidecar.listener import Listener
from sidecar.logging import Outage
from sidecar.metrics import Metrics
from sidecar.otel import traced, without_otel_metrics
from sidecar.outbox import Outbox
from sidecar.paths import default_socket_path
from sidecar.peers import PeerPolicy
from sidecar.protocol import ErrorCode
from sidecar.relay import Relay
from sidecar.replay import ReplayBuffer
from sidecar.signing import SignedCodec, Signer, load_keys

if TYPE_CHECKING:  # imported only with --tracing (the otel extra)
    from sidecar.tracing import Tracing

log = logging.getLogger(__name__)

#: Each starts the graceful stop; a second one exits at once. SIGHUP comes when the terminal that started the
#: daemon closes; a daemon has no configuration to reload (settings are read once), so it stops too, cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Daemon:
    """One syncar: a backend, a relay and a socket listener; `async with Daemon(s, handle_signals=False)` embeds one."""

    def __init__(self, settings: Settings, *, handle_signals: bool = True) -> None:
        self.settings = settings
        self._handle_signals = handle_signals
        self._stop = asyncio.Event()
        self._forced = asyncio.Event()
        with without_otel_metrics():
            backend_cls = load_backend(settings.backend, settings.mode)
        self.backend: Backend = backend_cls(settings.backend_config(), on_state=self._on_backend_state)
        codec = inner = CODECS[settings.codec](settings.instance_id, broker_echoes=self.backend.broker_echoes)
        # What keys the scopes of event ids: the same at every start, and secret when there is a secret.
        id_key = settings.instance_id.encode()
        signer = None
        if settings.signing_key_file is not None:
            keys = load_keys(settings.signing_key_file)
            backlog = settings.instance_ttl if settings.mode is Mode.DURABLE else None
            signer = Signer(keys, settings.signing_window, backlog=backlog)
            codec, id_key = SignedCodec(codec, signer), keys[0]
        self.tracing: Tracing | None = None
        if settings.tracing:
            self.tracing, codec = traced(settings, backend_cls.name, codec)
        self.metrics = metrics = Metrics(backend_cls.name, settings.codec)
        self.outbox = outbox = Outbox(
            self.backend, codec, settings.key, settings.outbox_bytes, metrics, tracing=self.tracing
        )
        self.replay = replay = ReplayBuffer(settings.replay_events, settings.replay_bytes)
        gaps = GapTracker()
        self.relay = Relay(
            settings.instance_id,
            backend_name=backend_cls.name,
            codec=codec,
            outbox=outbox,
            replay=replay,
            metrics=metrics,
            id_key=id_key,
            gaps=gaps,
            durable=settings.mode is Mode.DURABLE,
            max_event_age=settings.instance_ttl,
        )
        self.bus = announcing_bus(settings, self.backend)
        self.fleet = Fleet(
            self.bus,
            announcement_of(settings, inner.run if isinstance(inner, SyncarCodec) else None),
            key=settings.key,
            seq=lambda: outbox.on_bus,
            gaps=gaps,
            on_gap=self.relay.tell_gap,
            resubscribe=self._resubscribe,
            metrics=metrics,
            signer=signer,
        )
        self.backend.peer_instances = self.fleet.table.instances  # RabbitMQ's durable mode binds their queues again
        self.connections: set[Connection] = set()
        self._limits = Limits(
            settings.max_frame_bytes,
            settings.client_queue_bytes,
            settings.client_rate,
            settings.client_burst,
            PeerPolicy(settings.allow_uids, settings.allow_gids),
            settings.max_patterns,
        )
        # The default location is in a shared place (/tmp) when there is no XDG_RUNTIME_DIR: it must be private.
        self.listener = Listener(
            settings.socket,
            settings.socket_mode,
            self._accept,
            private_dir=settings.socket == default_socket_path(),
            overflow=protocol.error(ErrorCode.TOO_MANY_CLIENTS, "syncar is out of file descriptors"),
        )
        metrics.clients.set_function(lambda: len(self.connections))
        metrics.outbox_events.set_function(lambda: len(outbox))
        metrics.outbox_bytes.set_function(lambda: outbox.bytes)
        metrics.replay_events.set_function(lambda: len(replay))
        metrics.replay_bytes.set_function(lambda: replay.bytes)
        address = settings.http_address()
        self.http = None
        if address is not None:
            self.http = HttpServer(*address, self.unready_reason, metrics, self.fleet.describe)
        # Every connection is a descriptor: more clients than the limit holds would be cut off unseen.
        self.max_clients = fit_clients(
            settings.max_clients, raise_soft_limit(), 0 if self.http is None else MAX_HTTP_CONNECTIONS
        )
        self._outbox_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None  # connects in the background after a start without it
        self._subscription: Subscription | None = None
        self._serving = False
        self._stopping = False
        self.failure: str | None = None  # why the daemon stopped itself, if it did

    def _on_backend_state(self, state: BackendState) -> None:
        # The apps (and the log) hear of the broker only once the daemon serves, so a start that fails says nothing
        # of it; and it is up for them once our subscription is made too, so nothing flushed is missed by it.
        if self._serving:
            subscribing = state is BackendState.CONNECTED and self._subscription is None
            self.relay.on_backend_state(BackendState.CONNECTING if subscribing else state, self.backend.node)

    def _accept(self) -> Connection:
        turn_away = None
        if len(self.connections) >= self.max_clients:
            turn_away = protocol.error(
                ErrorCode.TOO_MANY_CLIENTS, f"this syncar already serves {self.max_clients} clients"
            )
        connection = Connection(
            self.relay, self._limits, self.metrics, on_close=self.connections.discard, turn_away=turn_away
        )
        self.connections.add(connection)
        return connection

    def unready_reason(self, broker: bool = False) -> str | None:
        """Why the daemon should get no traffic now, or None when it is ready: the apps can use the socket (local
        delivery works, publishes wait in the outbox while the broker is away); with `broker`, the broker is
        connected too (`/readyz/broker`)."""
        if self.failure is not None:
            return self.failure
        if self._stopping:
            return "shutting down"
        if not self.listener.listening:
            return "socket not listening"
        if broker and not self.relay.broker_up:
            return f"broker {self.backend.name} not connected"
        return None

    async def start(self) -> None:
        """Claim the socket and the HTTP port, connect to the broker and subscribe (or, if it cannot be reached now,
        go on without it), then serve.

        Raises:
            StartupError: the socket or the HTTP address cannot be bound (then the broker is never contacted); the
                broker refused us, or cannot be reached and `require_broker` is set.
            ConfigError: the broker URI is unusable.
        """
        settings = self.settings
        # From the first moment: a stop signal while the broker is being reached must end in an orderly stop
        # (run() stops once start() returns), not kill the process with its socket file left behind.
        self._catch_stop_signals(True)
        log.info(
            "syncar %s starting: instance %s, backend %s, codec %s, key %r",
            __version__,
            settings.instance_id,
            self.backend.name,
            settings.codec,
            settings.key,
        )
        unreachable = None
        try:
            # Bound first: a second syncar on this socket or port stops before it says anything to the broker. Apps
            # (and probes) that connect meanwhile wait in the listen backlog until served below: intended.
            self.listener.bind()
            if self.http is not None:
                await self.http.bind()
            await self._connect()
        except BackendError as exc:
            if settings.require_broker or not exc.retriable:
                await self._abandon_start()
                if isinstance(exc, ConfigError):
                    raise  # an unusable URI: exit 2 as any invalid setting, not 3
                hint = " (--require-broker is set)" if exc.retriable else ""
                raise StartupError(f"{exc}{hint}") from None
            unreachable = exc
        except BaseException:  # StartupError (socket, port), or the start cancelled
            await self._abandon_start()
            raise
        self._outbox_task = asyncio.create_task(self.outbox.run(), name="syncar-outbox")
        self._outbox_task.add_done_callback(self._task_ended)
        self.listener.serve()
        if self.http is not None:
            await self.http.serve()
        self._serving = True
        self._on_backend_state(self.backend.state)
        if unreachable is not None:
            outage = Outage(log)
            outage.began(
                "%s; starting without the broker: the apps of this daemon get each other's events, their "
                "publishes wait in the outbox (up to %d bytes); connecting in the background",
                unreachable,
                settings.outbox_bytes,
            )
            self._connecting = asyncio.create_task(self._connect_later(outage), name="syncar-connect")
            self._connecting.add_done_callback(self._task_ended)
        log.info("ready: apps may connect to %s", settings.socket)

    async def _abandon_start(self) -> None:
        """Undo a failed start: our socket file removed (not another's), the port freed, the broker let go."""
        self._catch_stop_signals(False)
        self.listener.remove()
        if self.http is not None:
            await self.http.stop()
        await self._close_buses()

    async def _connect(self) -> None:
        """Start the backends unless they are started, then subscribe to what is not yet; BackendError if one fails."""
        for backend in self._backends:
            if backend.state is BackendState.CONNECTING:  # never started, or its last start failed
                await backend.start()
        if self._subscription is None:
            self._subscription = await self.backend.subscribe(self.settings.key, self.relay.on_message)
        await self.fleet.subscribe()
        self._on_backend_state(self.backend.state)

    async def _resubscribe(self) -> None:
        """The fleet's watchdog heard nothing: make the subscriptions on its connection again (the events' too in
        broadcast mode, where they share it). BackendError if the broker refuses; the watchdog then calls again."""
        if self.bus is self.backend:
            subscription, self._subscription = self._subscription, None
            if subscription is not None:
                await subscription.unsubscribe()
            self._subscription = await self.backend.subscribe(self.settings.key, self.relay.on_message)
        await self.fleet.resubscribe_own()
        self._on_backend_state(self.backend.state)

    async def _connect_later(self, outage: Outage) -> None:
        """Try until connected and subscribed, backing off; the outage is logged once, then summarised."""
        backoff = Backoff(cap=self.settings.reconnect_max_delay)
        delay = backoff.next()
        while True:  # until connected, or _close_backend() cancels us
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except BackendClosed:  # stopped, and a library swallowed the cancellation (_close_backend)
                return
            except BackendError as exc:  # refused now (a password changed meanwhile) or not: try again all the same
                delay = backoff.next()
                outage.failed("%s; next attempt in %.1fs", exc, delay)
                continue
            outage.ended(
                "broker %s reached %.1fs after the start (%d failed attempts); subscribed to %r",
                self.backend.name,
                outage.seconds,
                outage.failures,
                self.settings.key,
            )
            return

    def _catch_stop_signals(self, catch: bool) -> None:
        """Route SIGTERM, SIGINT and SIGHUP to request_stop (or back to their defaults); main thread only."""
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            if catch:
                loop.add_signal_handler(sig, self.request_stop)
            else:
                loop.remove_signal_handler(sig)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """The outbox's task ends only when `_close_backend()` cancels it, the background connect also once connected.
        Ended otherwise (a CancelledError nobody asked for, aiormq's, found by review), publishes would never go out or
        the broker never be reached, unsaid: stop, saying why, for the supervisor to start syncar again."""
        if task is self._outbox_task:
            what, effect = "the outbox stopped", "publishes can no longer reach the broker"
        elif task is self._connecting and (task.cancelled() or task.exception() is not None):
            what, effect = "the background connect to the broker stopped", "the broker can no longer be reached"
        else:
            return
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        self.failure = f"{what}: {exc!r}"
        log.critical("%s; %s: stopping", self.failure, effect, exc_info=exc)
        self.request_stop()

    def request_stop(self) -> None:
        if self._stop.is_set():
            # A second signal: the operator does not want to wait for the flush.
            log.warning("second stop signal: exiting without waiting")
            self._forced.set()
        self._stop.set()

    async def _within(self, deadline: float, awaitable: Awaitable[object]) -> bool:
        """Await until done (True), the deadline passes or a second signal comes (False)."""
        task = asyncio.ensure_future(awaitable)
        forced = asyncio.ensure_future(self._forced.wait())
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.0)
        done, _ = await asyncio.wait({task, forced}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if task in done:
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def serve(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop accepting, flush the outbox and the clients within `shutdown_timeout`, close the broker."""
        log.info("shutting down")
        self._stopping = True
        self.relay.stop()
        self.listener.stop_accepting()
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout
        if not await self._within(deadline, self.outbox.drain()) or self.outbox:
            log.warning(
                "shutdown: %d events not sent to the broker within %.1fs",
                len(self.outbox),
                self.settings.shutdown_timeout,
            )
        await self._within(deadline, self.fleet.stop(timeout=1.0))  # its last announcement says it is leaving
        if self._subscription is not None:
            # Stop consuming while the apps are still connected: in durable mode, what is not handled yet stays
            # on the broker for the next run instead of being acknowledged into a buffer about to vanish.
            await self._within(deadline, self._subscription.unsubscribe())
        self.outbox.stop()  # what the broker has not taken is given up, and a publish asking for an ack gets a nack
        self.relay.say_stopping()
        connections = list(self.connections)
        for connection in connections:
            connection.close()
        if connections:
            await self._within(deadline, asyncio.gather(*(c.closed for c in connections)))
        await self._close_backend()
        self.listener.remove()
        if self.http is not None:
            await self.http.stop()
        if self.tracing is not None and not await self._within(deadline, asyncio.to_thread(self.tracing.shutdown)):
            log.warning("shutdown: the last spans were not exported within %.1fs", self.settings.shutdown_timeout)
        self._catch_stop_signals(False)
        log.info("stopped")

    async def _close_backend(self) -> None:
        connecting, self._connecting = self._connecting, None  # ended by us: not a failure (_task_ended)
        if connecting is not None:
            connecting.cancel()
            await asyncio.wait({connecting}, timeout=1.0)
        outbox_task, self._outbox_task = self._outbox_task, None  # ended by us: not a failure (_task_ended)
        if outbox_task is not None:
            outbox_task.cancel()
            # Bounded: a broker library may swallow the cancellation (asyncio.wait_for on 3.11); closing the
            # backend below then ends the task with BackendClosed.
            await asyncio.wait({outbox_task}, timeout=1.0)
        await self._close_buses()

    @property
    def _backends(self) -> tuple[Backend, ...]:
        """The events' backend, and the announcements' where it is another (durable mode)."""
        return (self.backend,) if self.bus is self.backend else (self.backend, self.bus)

    async def _close_buses(self) -> None:
        await self.fleet.stop(timeout=0)
        for backend in self._backends:
            await backend.close()

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()
