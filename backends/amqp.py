"""The RabbitMQ backend (AMQP 0-9-1 over an aio-pika robust connection), broadcast mode.

Topology as feathers-sync 3.x's lib/adapters/amqp.js, so both can share a broker: a fanout exchange named by the
topic, non-durable, not auto-delete, not internal, no arguments (amqplib's `assertExchange(key, 'fanout', {durable:
false})`; other flags make one side fail with PRECONDITION_FAILED); per instance a server-named exclusive auto-delete
queue bound with the key `queue-binding` (fanout ignores it). A broker restart loses that queue and what was in
flight; a fresh queue is declared after the reconnect: at-most-once across outages, as feathers-sync.
One connection per daemon; one channel with publisher confirms for publish(), one for consuming with a prefetch
window, so a slow handler holds back the broker instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection, AbstractRobustExchange
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, AMQPChannelError, DeliveryError
from pamqp.commands import Basic
from yarl import URL

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

BINDING_KEY = "queue-binding"  # feathers-sync's; a fanout exchange ignores it
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
DEFAULT_RECONNECT_INTERVAL = 0.5  # seconds; each wait is a random 1-2x of it
DEFAULT_HEARTBEAT = 10  # seconds: a silently dead broker is noticed in ~33 s, not aiormq's default ~3 min
DEFAULT_PREFETCH = 256  # unacknowledged messages per consumer
ACK_EVERY = 64  # acknowledge (multiple=True) at least this often, and whenever the handler catches up
DEFAULT_PUBLISH_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # RabbitMQ refuses over 128 MiB by default
DRAIN_TIMEOUT = 5.0  # how long unsubscribe() lets a running handler finish
CLOSE_TIMEOUT = 5.0

# What a lost connection or channel raises through aio-pika/aiormq: AMQPError, OSError (TimeoutError too),
# RuntimeError (ChannelInvalidStateError), ...
BROKER_ERRORS: tuple[type[BaseException], ...] = CONNECTION_EXCEPTIONS

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


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _discard(connection: AbstractRobustConnection) -> None:
    with contextlib.suppress(*BROKER_ERRORS):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await connection.close()

class JitteredRobustConnection(aio_pika.RobustConnection):
    """Waits a random 1-2x `reconnect_interval` between attempts: a fleet must not come back in lockstep."""

    base_interval: float = DEFAULT_RECONNECT_INTERVAL

    @property
    def reconnect_interval(self) -> float:  # read anew for each wait (and for aio-pika's log line, not the same)
        return self.base_interval * random.uniform(1.0, 2.0)

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self.base_interval = float(value)


class AmqpSubscription(Subscription):
    """One topic's queue and consumer; a worker task hands its messages to the handler one at a time."""

    def __init__(self, backend: AmqpBackend, topic: str, handler: Handler) -> None:
        self.topic, self._backend, self._handler = topic, backend, handler
        self.active, self.cancelled = True, False  # cancelled: by the broker (its queue was deleted, say)
        self.queue: str | None = None
        self.consumer_tag: str | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._inbox: asyncio.Queue[aiormq.abc.DeliveredMessage | None] = asyncio.Queue()  # bounded by prefetch
        self._worker = asyncio.create_task(self._work(), name=f"syncar-amqp-{topic}")

    def live_on(self, underlay: aiormq.abc.AbstractChannel) -> bool:
        return self._underlay is underlay and not underlay.is_closed and not self.cancelled

    async def attach(self, underlay: aiormq.abc.AbstractChannel) -> None:
        """Declare the exchange, a fresh server-named queue, the binding and the consumer on `underlay`."""
        await underlay.exchange_declare(self.topic, exchange_type="fanout", durable=False, auto_delete=False,
                                        internal=False)
        declared = await underlay.queue_declare("", durable=False, exclusive=True, auto_delete=True)
        queue = declared.queue or ""
        await underlay.queue_bind(queue, self.topic, routing_key=BINDING_KEY)
        consumer = await underlay.basic_consume(queue, self._on_delivery, no_ack=False)
        self._underlay, self.queue, self.consumer_tag, self.cancelled = underlay, queue, consumer.consumer_tag, False
        log.debug("amqp: consuming topic %r from queue %s", self.topic, queue)

    async def _on_delivery(self, message: aiormq.abc.DeliveredMessage) -> None:
        # aiormq runs each delivery in a task of its own, in delivery order; queueing before any await keeps it.
        if self.active:
            self._inbox.put_nowait(message)

    async def _work(self) -> None:
        unacked = 0
        while (message := await self._inbox.get()) is not None:
            if not self.active:
                continue
            try:
                await self._handler(Message(message.body))
            except Exception as exc:
                # No REDELIVERY in broadcast mode: the message is dropped for this subscriber.
                log.error("amqp: subscriber of %r failed, message dropped: %s", self.topic, exc)
                log.debug("amqp: subscriber failure", exc_info=True)
            unacked += 1
            if unacked >= ACK_EVERY or self._inbox.empty():
                unacked = 0
                await self._ack(message)

    async def _ack(self, message: aiormq.abc.DeliveredMessage) -> None:
        channel, tag = message.channel, getattr(message.delivery, "delivery_tag", None)
        if tag is None or channel.is_closed:
            return  # delivered on a channel that is gone: the broker forgot those deliveries with it
        try:
            await channel.basic_ack(tag, multiple=True)
        except BROKER_ERRORS as exc:
            log.debug("amqp: ack on %r not sent: %s", self.topic, exc)

    async def stop(self, *, cancel_consumer: bool) -> None:
        """Stop delivering; optionally tell the broker (the auto-delete queue goes with its consumer)."""
        if not self.active:
            return
        self.active = False
        underlay, tag = self._underlay, self.consumer_tag
        if cancel_consumer and underlay is not None and tag is not None and not underlay.is_closed:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await underlay.basic_cancel(tag)
            except BROKER_ERRORS as exc:  # TimeoutError is an OSError
                log.debug("amqp: cancelling the consumer of %r failed: %s", self.topic, exc)
        self._inbox.put_nowait(None)
        if asyncio.current_task() is self._worker:
            return  # unsubscribed from inside the handler: the worker ends when the handler returns
        done, _ = await asyncio.wait({self._worker}, timeout=DRAIN_TIMEOUT)
        if not done:
            await _cancel(self._worker)

    async def unsubscribe(self) -> None:
        if self.active:
            self._backend.forget(self)
            await self.stop(cancel_consumer=True)


class AmqpBackend(Backend):
    name: ClassVar[str] = "amqp"
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.ORDERED, Feature.CONFIRMS})
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self.publish_timeout = DEFAULT_PUBLISH_TIMEOUT
        self._connection: JitteredRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._consume_channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractRobustExchange] = {}
        self._subscriptions: list[AmqpSubscription] = []
        self._attach_lock = asyncio.Lock()
        self._restore_wanted = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False
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
        defaults = {"heartbeat": str(DEFAULT_HEARTBEAT), "reconnect_interval": str(DEFAULT_RECONNECT_INTERVAL),
                    "name": f"syncar {self.config.instance_id}"}
        url = url.update_query({key: value for key, value in defaults.items() if key not in url.query})
        return url.without_query_params("max_message_bytes")

    async def start(self) -> None:
        if self._closing:
            raise BackendClosed("amqp: backend is closed")
        # What aio_pika.connect_robust() does, with our jittered class and a handle to close if it fails.
        connection = JitteredRobustConnection(self._url())
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await connection.connect(timeout=self.config.connect_timeout)
                publish_channel = await connection.channel(publisher_confirms=True)
                consume_channel = await connection.channel(publisher_confirms=False)
                await consume_channel.set_qos(prefetch_count=DEFAULT_PREFETCH)
        except BROKER_ERRORS as exc:  # TimeoutError is an OSError
            await _discard(connection)
            reason = f"no answer within {self.config.connect_timeout:g}s" if isinstance(exc, TimeoutError) else None
            if "Connection.OpenOk" in str(exc):  # aiormq only says it got a Connection.Close instead
                reason = "the broker refused to open the vhost (no such vhost, or no permission on it)"
            raise BackendUnavailable(f"amqp: cannot connect to {self._where}: {reason or self._clean(exc)}") from exc
        self._connection, self._publish_channel, self._consume_channel = connection, publish_channel, consume_channel
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reopened)
        consume_channel.reopen_callbacks.add(self._on_reopened)  # aio-pika reopens channels, not our queues
        self._keeper = asyncio.create_task(self._keep(), name="syncar-amqp-restore")
        log.info("amqp: connected to %s", self._where)
        self._set_state(BackendState.CONNECTED)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._keeper is not None:
            await _cancel(self._keeper)
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            # Closing the connection deletes the exclusive queues; no need to cancel each consumer first.
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
        try:
            async with asyncio.timeout(self.publish_timeout):
                exchange = self._exchanges.get(topic)
                if exchange is None:
                    exchange = await channel.declare_exchange(topic, aio_pika.ExchangeType.FANOUT, durable=False,
                                                              auto_delete=False, internal=False)
                    self._exchanges[topic] = exchange
                # Concurrent, so confirms overlap; aiormq writes them in call order under its channel lock.
                results = await asyncio.gather(
                    *(exchange.publish(aio_pika.Message(body), routing_key="", mandatory=False) for body in bodies),
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
        if isinstance(exc, asyncio.CancelledError):
            return BackendUnavailable(f"amqp: {action} interrupted: connection to {self._where} lost")
        if isinstance(exc, TimeoutError):
            return BackendUnavailable(f"amqp: {action}: no answer from {self._where}")
        return BackendUnavailable(f"amqp: {action} failed, {self._where} unreachable: {self._clean(exc)}")

    def _clean(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__  # one line, and no password
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        channel = self._usable(self._consume_channel)
        subscription = AmqpSubscription(self, topic, handler)
        self._subscriptions.append(subscription)
        try:
            async with asyncio.timeout(self.config.connect_timeout), self._attach_lock:
                underlay = await channel.get_underlay_channel()
                await subscription.attach(underlay)
                underlay.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)
        except BROKER_ERRORS as exc:  # TimeoutError is an OSError
            await subscription.unsubscribe()
            raise self._error(f"subscribe to {topic!r}", exc) from exc
        return subscription

    def forget(self, subscription: AmqpSubscription) -> None:
        self._subscriptions = [s for s in self._subscriptions if s is not subscription]

    def _on_connection_lost(self, _sender: object, exc: BaseException | None) -> None:
        if self._closing or self._connection is None:
            return
        if self.state is BackendState.CONNECTED:
            interval = self._connection.base_interval
            log.warning("amqp: connection to %s lost (%s); reconnecting every %.1f-%.1fs", self._where,
                        self._clean(exc) if exc is not None else "closed", interval, 2 * interval)
        self._set_state(BackendState.RECONNECTING)

    def _on_reopened(self, _sender: object) -> None:  # the connection, or the consuming channel alone
        self._restore_wanted.set()

    def _on_consumer_cancelled(self, frame: Basic.Cancel) -> None:
        # The broker cancelled a consumer (its queue was deleted, say): declare a new queue.
        for subscription in self._subscriptions:
            if subscription.consumer_tag == frame.consumer_tag:
                log.warning("amqp: the broker cancelled the consumer of %r; subscribing again", subscription.topic)
                subscription.cancelled = True
                self._restore_wanted.set()

    async def _keep(self) -> None:
        """Re-create queues, bindings and consumers once aio-pika has restored the connection and channels."""
        while True:
            await self._restore_wanted.wait()
            self._restore_wanted.clear()
            try:
                await self._restore()
            except BROKER_ERRORS as exc:  # channel errors (AMQPChannelError) are AMQPErrors too
                delay = DEFAULT_RECONNECT_INTERVAL * random.uniform(1.0, 2.0)
                log.warning("amqp: subscribing again failed, retrying in %.1fs: %s", delay, self._clean(exc))
                log.debug("amqp: restore failure", exc_info=True)
                await asyncio.sleep(delay)
                self._restore_wanted.set()

    async def _restore(self) -> None:
        connection, publish_channel, consume_channel = self._connection, self._publish_channel, self._consume_channel
        if connection is None or publish_channel is None or consume_channel is None:
            return
        # Wait until aio-pika has reopened both channels (and re-declared the publish side's exchanges).
        await asyncio.gather(publish_channel.ready(), consume_channel.ready())
        restored = 0
        async with self._attach_lock:
            underlay = await consume_channel.get_underlay_channel()
            for subscription in list(self._subscriptions):
                if subscription.active and not subscription.live_on(underlay):
                    await subscription.attach(underlay)
                    restored += 1
            underlay.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)
        # The connection may have dropped again meanwhile; then the next reconnect restores.
        if self._closing or not connection.connected.is_set() or underlay.is_closed:
            return
        if self.state is not BackendState.CONNECTED:
            log.info("amqp: reconnected to %s; %d subscription(s) restored", self._where, restored)
        self._set_state(BackendState.CONNECTED)
