"""The RabbitMQ backend (AMQP 0-9-1 over an aio-pika robust connection), broadcast and durable modes.

What is declared in each mode is in `backends.amqp_topology`. Broadcast shares feathers-sync's exchange and has a
throwaway queue per daemon: a broker restart loses that queue and what was in flight, and a fresh queue is declared
after the reconnect (at-most-once across outages, as feathers-sync). Durable has a durable queue per instance id
that keeps what is published while the daemon is away, persistent messages and acknowledgements after the handler.
One connection per daemon; one channel with publisher confirms for publish() (returning once the broker confirmed
every message of the call), and one channel per subscription (`backends.amqp_subscription`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection, AbstractRobustExchange
from aio_pika.exceptions import AMQPChannelError, DeliveryError
from pamqp.commands import Basic
from yarl import URL

from backends.amqp_subscription import (
    BROKER_ERRORS,
    CLOSE_TIMEOUT,
    DEFAULT_PREFETCH,
    AmqpSubscription,
    cancel_task,
)
from backends.amqp_topology import BINDING_KEY, DEFAULT_QUEUE_TYPE, QUEUE_TYPES, Topology
from backends.base import (
    Backend,
    BackendClosed,
    BackendConfig,
    BackendConfigError,
    BackendError,
    BackendRefused,
    BackendState,
    BackendUnavailable,
    Feature,
    Handler,
    MessageTooLarge,
    PublishTimeout,
    PublishUnconfirmed,
    StateCallback,
    Subscription,
    tls_refused,
)
from sidecar.backoff import DEFAULT_INITIAL, Backoff
from sidecar.logging import Outage

__all__ = ["BINDING_KEY", "DEFAULT_PREFETCH", "AmqpBackend", "AmqpSubscription"]

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
#: The broker's answers to a connect that mean "not you", as opposed to "not now".
REFUSALS = (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.AuthenticationError,
            aiormq.exceptions.ConnectionNotAllowed)
DEFAULT_RECONNECT_INTERVAL = DEFAULT_INITIAL  # the first wait between attempts; then doubling up to the cap
DEFAULT_HEARTBEAT = 10  # seconds: a silently dead broker is noticed in ~33 s, not aiormq's default ~3 min
DEFAULT_PUBLISH_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # RabbitMQ refuses over 128 MiB by default

# The URI query options aiormq/aio-pika read, and what each must be. aiormq ignores unknown options silently
# (aio-pika's own docstring spells the CA option `ca_certs`, which aiormq never reads), so start() refuses them.
URI_OPTIONS: dict[str, tuple[Callable[[str], bool], str]] = {
    "cafile": (lambda v: Path(v).is_file(), "an existing file"),
    "capath": (lambda v: Path(v).is_dir(), "an existing directory"),
    "cadata": (lambda v: re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", v) is not None, "base64 of DER certificates"),
    "certfile": (lambda v: Path(v).is_file(), "an existing file"),
    "keyfile": (lambda v: Path(v).is_file(), "an existing file"),
    "no_verify_ssl": (lambda v: v in {"0", "1"}, "0 or 1"),
    "heartbeat": (lambda v: v.isdigit() and int(v) < 65536, "whole seconds from 0 (off) to 65535"),
    "reconnect_interval": (lambda v: re.fullmatch(r"\d*\.?\d+", v) is not None and float(v) > 0, "seconds above 0"),
    "auth": (lambda v: v.lower() in {"plain", "external"}, "plain or external"),
    "name": (lambda v: True, "a connection name"),
    # syncar's own, not aiormq's: set it to the broker's max_message_size when that is below our default.
    "max_message_bytes": (lambda v: v.isdigit() and 1024 <= int(v) <= 512 * 1024 * 1024, "bytes, 1024 to 512 MiB"),
    # syncar's own too: the type of the durable queues (ignored in broadcast mode).
    "queue_type": (lambda v: v in QUEUE_TYPES, " or ".join(QUEUE_TYPES)),
}
TLS_OPTIONS = frozenset({"cafile", "capath", "cadata", "certfile", "keyfile", "no_verify_ssl"})


def check_options(url: URL) -> None:
    """Raise BackendError, naming the option, for a query option aiormq would ignore or choke on."""
    for key, value in url.query.items():
        if key not in URI_OPTIONS:
            raise BackendConfigError(f"amqp: unknown URI option {key!r}; known: {', '.join(URI_OPTIONS)}")
        if key in TLS_OPTIONS and url.scheme != "amqps":
            raise BackendConfigError(f"amqp: URI option {key!r} needs amqps://")
        valid, what = URI_OPTIONS[key]
        if not valid(value):
            raise BackendConfigError(f"amqp: URI option {key} must be {what}, not {value!r}")


async def _discard(closable: AbstractRobustConnection | AbstractRobustChannel) -> None:
    with contextlib.suppress(*BROKER_ERRORS):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await closable.close()

class BackingOffRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, waiting between attempts as `backoff` says and telling `on_failure` of each.

    aio-pika's reconnect loop reads `reconnect_interval` inside the `except` block of every failed attempt (for its
    log line, which our logging config silences), maybe again in a close callback the failure runs, and for its
    sleep. The first read that sees an exception after the last wait draws the next delay and reports the failure;
    the others return that delay. `reconnect_interval` from the URI is the first wait (capped by
    `--reconnect-max-delay`).
    """

    base_interval: float = DEFAULT_RECONNECT_INTERVAL
    backoff = Backoff()
    on_failure: Callable[[BaseException, float], None] | None = None
    _delay = DEFAULT_RECONNECT_INTERVAL
    _drawn_at = -math.inf

    @property
    def reconnect_interval(self) -> float:
        failure, now = sys.exc_info()[1], time.monotonic()
        # Half the last delay: the reads of one attempt come within milliseconds, the next attempt after the sleep.
        if failure is not None and now - self._drawn_at >= self._delay / 2:
            self._delay, self._drawn_at = self.backoff.next(), now
            if self.on_failure is not None:
                self.on_failure(failure, self._delay)
        return self._delay

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:  # aio-pika's constructor, from the URI
        self.base_interval = float(value)


class AmqpBackend(Backend):
    name: ClassVar[str] = "amqp"
    features: ClassVar[frozenset[Feature]] = frozenset()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self.publish_timeout = DEFAULT_PUBLISH_TIMEOUT
        self.topology = Topology(config.mode, config.instance_id, config.retention, config.instance_ttl)
        self._connection: BackingOffRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractRobustExchange] = {}
        self._subscriptions: list[AmqpSubscription] = []
        self._attach_lock = asyncio.Lock()
        self._restore_wanted = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False
        self._outage = Outage(log)
        self._restore_backoff = Backoff(cap=config.reconnect_max_delay)
        self._where = "the broker"
        self._secrets: tuple[str, ...] = ()

    def _url(self) -> URL:
        """The URI plus syncar's defaults for what it leaves out; BackendError if it is unusable."""
        try:
            url = URL(self.config.uri)
            port = url.port or DEFAULT_PORTS.get(url.scheme, 5672)
        except ValueError as exc:
            raise BackendConfigError(f"amqp: invalid URI: {self._clean(exc)}") from exc
        self._secrets = tuple(s for s in (url.password, url.raw_password) if s)
        if not url.host:
            raise BackendConfigError("amqp: the URI names no host (amqp://user:password@host:port/vhost)")
        check_options(url)
        self._where = f"{url.host}:{port} vhost {url.path[1:] or '/'!r}"
        self.max_message_bytes = int(url.query.get("max_message_bytes", self.max_message_bytes))
        self.topology = dataclasses.replace(self.topology, queue_type=url.query.get("queue_type", DEFAULT_QUEUE_TYPE))
        defaults = {"heartbeat": str(DEFAULT_HEARTBEAT), "reconnect_interval": str(DEFAULT_RECONNECT_INTERVAL),
                    "name": f"syncar {self.config.instance_id}"}
        url = url.update_query({key: value for key, value in defaults.items() if key not in url.query})
        return url.without_query_params("max_message_bytes", "queue_type")

    async def start(self) -> None:
        if self._closing:
            raise BackendClosed("amqp: backend is closed")
        # What aio_pika.connect_robust() does, with our class and a handle to close if it fails.
        connection = BackingOffRobustConnection(self._url())
        cap = self.config.reconnect_max_delay
        connection.backoff = Backoff(min(connection.base_interval, cap), cap)
        connection.on_failure = self._on_attempt_failed
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await connection.connect(timeout=self.config.connect_timeout)
                publish_channel = await connection.channel(publisher_confirms=True)
        except BROKER_ERRORS as exc:  # TimeoutError is an OSError
            await _discard(connection)
            reason = f"no answer within {self.config.connect_timeout:g}s" if isinstance(exc, TimeoutError) else None
            if isinstance(exc, OSError) and exc.strerror:  # "connection refused", not "[Errno 111] Connection ..."
                reason = exc.strerror.lower()
            vhost_refused = "Connection.OpenOk" in str(exc)  # aiormq only says it got a Connection.Close instead
            if vhost_refused:
                reason = "the broker refused to open the vhost (no such vhost, or no permission on it)"
            # ProbableAuthenticationError is the broker's 403 ACCESS_REFUSED; AuthenticationError, no common mechanism.
            refused = vhost_refused or tls_refused(exc) or isinstance(exc, REFUSALS)
            raise (BackendRefused if refused else BackendUnavailable)(
                f"amqp: cannot connect to {self._where}: {reason or self._clean(exc)}") from exc
        except asyncio.CancelledError:  # the connection must not live on, reconnecting by itself
            await _discard(connection)
            raise
        self._connection, self._publish_channel = connection, publish_channel
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reopened)
        self._keeper = asyncio.create_task(self._keep(), name="syncar-amqp-restore")
        log.info("amqp: connected to %s (%s mode)", self._where, self.config.mode)
        self._set_state(BackendState.CONNECTED)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._keeper is not None:
            await cancel_task(self._keeper)
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            # Closing the connection deletes the exclusive queues and puts back what durable ones had delivered
            # and not seen acknowledged; no need to cancel each consumer first.
            await subscription.stop(cancel_consumer=False)
        if self._connection is not None:
            await _discard(self._connection)
        self._set_state(BackendState.CLOSED)

    def _usable(self, channel: AbstractRobustChannel | None) -> AbstractRobustChannel:
        if self._closing:
            raise BackendClosed("amqp: backend is closed")
        if self.state is not BackendState.CONNECTED or channel is None:
            raise BackendUnavailable(f"amqp: not connected to {self._where}")
        return channel

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        channel = self._usable(self._publish_channel)
        if (largest := max(map(len, bodies), default=0)) > self.max_message_bytes:
            raise MessageTooLarge(f"amqp: message of {largest} bytes is over the limit of {self.max_message_bytes}")
        if not bodies:
            return
        topology = self.topology
        try:
            async with asyncio.timeout(self.publish_timeout):
                exchange = self._exchanges.get(topic)
                if exchange is None:
                    exchange = await channel.declare_exchange(topology.exchange(topic), aio_pika.ExchangeType.FANOUT,
                                                              durable=topology.durable, auto_delete=False,
                                                              internal=False)
                    self._exchanges[topic] = exchange
                # Straight to aiormq, without waiting for each frame to reach the socket before the next is
                # queued (what aio-pika's publish does, one loop round-trip per message): all the batch's messages
                # go out in order, and their confirms are awaited together. A persistent message is confirmed once
                # every durable queue it was routed to has it on disk.
                # aio-pika's abstract type leaves out `wait`; its underlay is always aiormq's Channel.
                underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                results = await asyncio.gather(
                    *(underlay.basic_publish(body, exchange=exchange.name, routing_key="", wait=False,
                                             properties=Basic.Properties(delivery_mode=topology.delivery_mode))
                      for body in bodies),
                    return_exceptions=True,
                )
        except TimeoutError as exc:
            raise PublishTimeout(f"amqp: the broker did not confirm within {self.publish_timeout:g}s") from exc
        except BROKER_ERRORS as exc:
            raise self._error("publish", exc) from exc
        for result in results:
            if isinstance(result, BaseException):
                raise self._error("publish", result) from result

    def _error(self, action: str, exc: BaseException) -> BackendError:
        """Translate an aio-pika/aiormq exception; no broker library type leaves this module."""
        if isinstance(exc, DeliveryError):
            return BackendError(f"amqp: {action}: the broker refused the message (nack)")
        if isinstance(exc, AMQPChannelError):  # the broker closed the channel over this request
            return BackendError(f"amqp: {action} failed: {self._clean(exc)}")
        # A publish cut off may have reached the broker before the connection, and the confirm, were lost.
        lost = PublishUnconfirmed if action == "publish" else BackendUnavailable
        if isinstance(exc, asyncio.CancelledError):
            return lost(f"amqp: {action} interrupted: connection to {self._where} lost")
        if isinstance(exc, TimeoutError):
            return lost(f"amqp: {action}: no answer from {self._where}")
        return lost(f"amqp: {action} failed, {self._where} unreachable: {self._clean(exc)}")

    def _clean(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__  # one line, and no password
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        self._usable(self._publish_channel)
        self.topology.exchange(topic)  # a key that cannot name an exchange is a config error, raised here
        connection = self._connection
        assert connection is not None  # set with the publish channel
        subscription: AmqpSubscription | None = None
        channel: AbstractRobustChannel | None = None
        try:
            async with asyncio.timeout(self.config.connect_timeout), self._attach_lock:
                channel = await connection.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=DEFAULT_PREFETCH)
                channel.reopen_callbacks.add(self._on_reopened)  # aio-pika reopens channels, not our queues
                subscription = AmqpSubscription(topic, handler, self.topology, channel, forget=self._forget,
                                                restore=self._restore_wanted.set)
                self._subscriptions.append(subscription)
                await subscription.attach()
        except BROKER_ERRORS as exc:  # TimeoutError is an OSError
            if subscription is not None:
                await subscription.unsubscribe()  # closes the channel too
            elif channel is not None:
                await _discard(channel)
            raise self._error(f"subscribe to {topic!r}", exc) from exc
        return subscription

    def _forget(self, subscription: AmqpSubscription) -> None:
        self._subscriptions = [s for s in self._subscriptions if s is not subscription]

    def _on_connection_lost(self, _sender: object, exc: BaseException | None) -> None:
        if self._closing or self._connection is None:
            return
        if self.state is BackendState.CONNECTED:
            self._outage.began("amqp: connection to %s lost (%s); reconnecting", self._where,
                               self._clean(exc) if exc is not None else "closed")
        self._set_state(BackendState.RECONNECTING)

    def _on_attempt_failed(self, exc: BaseException, delay: float) -> None:
        self._outage.failed("amqp: reconnect to %s failed (%s); next attempt in %.1fs", self._where,
                            self._clean(exc), delay)

    def _on_reopened(self, _sender: object) -> None:  # the connection, or one subscription's channel alone
        self._restore_wanted.set()

    async def _keep(self) -> None:
        """Re-create queues, bindings and consumers once aio-pika has restored the connection and channels."""
        while True:
            await self._restore_wanted.wait()
            self._restore_wanted.clear()
            try:
                await self._restore()
            except BROKER_ERRORS as exc:  # channel errors (AMQPChannelError) are AMQPErrors; TimeoutError an OSError
                delay = self._restore_backoff.next()
                self._outage.failed("amqp: subscribing again failed, retrying in %.1fs: %s", delay, self._clean(exc))
                log.debug("amqp: restore failure", exc_info=True)
                await asyncio.sleep(delay)
                self._restore_wanted.set()

    async def _restore(self) -> None:
        connection, publish_channel = self._connection, self._publish_channel
        if connection is None or publish_channel is None:
            return
        # Wait until aio-pika has reopened the connection and the publishing channel (and re-declared its
        # exchanges); attach() reopens a subscription's channel if aio-pika has not.
        await publish_channel.ready()
        restored = 0
        async with self._attach_lock:
            for subscription in list(self._subscriptions):
                if subscription.active and not await subscription.live():
                    # Bounded: a queue that does not answer (a quorum queue still electing a leader after a broker
                    # restart) fails this round, and _keep() tries again.
                    async with asyncio.timeout(self.config.connect_timeout):
                        await subscription.attach()
                    restored += 1
        # The connection may have dropped again meanwhile; then the next reconnect restores.
        if self._closing or not connection.connected.is_set() or publish_channel.is_closed:
            return
        self._outage.ended("amqp: reconnected to %s after %.1fs (%d failed attempts); %d subscription(s) restored",
                           self._where, self._outage.seconds, self._outage.failures, restored)
        connection.backoff.reset()
        self._restore_backoff.reset()
        self._set_state(BackendState.CONNECTED)


class AmqpDurableBackend(AmqpBackend):
    """Durable mode: one durable queue per instance (`backends.amqp_topology`)."""

    features: ClassVar[frozenset[Feature]] = frozenset({Feature.DURABLE})
