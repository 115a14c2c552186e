"""The RabbitMQ backend (AMQP 0-9-1 over an aio-pika robust connection), broadcast and durable modes.

What is declared in each mode is in `backends.amqp_topology`. Broadcast shares feathers-sync's exchange and has a
throwaway queue per daemon: a broker restart loses that queue and what was in flight, and a fresh queue is declared
after the reconnect (at-most-once across outages, as feathers-sync). Durable has a durable queue per instance id
that keeps what is published while the daemon is away, persistent messages and acknowledgements after the handler.
One connection per daemon; one channel with publisher confirms for publish() (returning once the broker confirmed
every message of the call), and one channel per subscription (`backends.amqp_subscription`). What is restored after
a lost connection, and when the backend is CONNECTED again, is `backends.amqp_restore`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Sequence
from typing import ClassVar, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import AMQPChannelError, DeliveryError
from pamqp.commands import Basic

from backends import amqp_internals
from backends.amqp_common import (
    BROKER_ERRORS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PREFETCH,
    Interrupted,
    cancel_task,
    confirmed,
    discard,
    interruptions,
    parse_uri,
)
from backends.amqp_connection import BackingOffRobustConnection, Hosts
from backends.amqp_restore import AmqpRestoringBackend
from backends.amqp_subscription import AmqpDurableSubscription, AmqpSubscription
from backends.base import (
    BackendClosed,
    BackendConfig,
    BackendError,
    BackendRefused,
    BackendState,
    BackendUnavailable,
    Feature,
    Handler,
    PublishTimeout,
    PublishUnconfirmed,
    StateCallback,
    Subscription,
    describe_error,
)
from backends.tls import tls_refused
from sidecar.backoff import Backoff

log = logging.getLogger(__name__)

#: The broker's answers to a connect that mean "not you", as opposed to "not now".
REFUSALS = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ConnectionNotAllowed,
)
DEFAULT_PUBLISH_TIMEOUT = 10.0
CANNOT_CONNECT = "amqp: cannot connect to "


def unreachable(errors: Sequence[BackendError]) -> str:
    """The hosts a start could not reach and why, in one line: `h1:5672 vhost '/': connection refused; ...`."""
    return "; ".join(str(error).removeprefix(CANNOT_CONNECT) for error in errors)


class AmqpBackend(AmqpRestoringBackend):
    """Broadcast mode: feathers-sync's exchange, a throwaway queue per daemon. What differs in durable mode is
    what is declared (`backends.amqp_topology.Topology`, made from the mode) and what a subscription does with a
    failure and when it acknowledges (its `subscription_class`)."""

    name: ClassVar[str] = "amqp"
    # RabbitMQ has no no-local: the queue is bound so that the broker keeps our own messages from it
    # (amqp_topology.spare_own).
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.NO_ECHO})
    subscription_class: ClassVar[type[AmqpSubscription]] = AmqpSubscription
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self.publish_timeout = DEFAULT_PUBLISH_TIMEOUT
        self._properties = Basic.Properties(delivery_mode=self.topology.delivery_mode)
        # Every message of ours is published with this routing key, for our queues not to get them back (fanout
        # exchanges ignore it). Random, not the instance id: unique even to two daemons given the same one.
        self._routing_key = f"syncar-{secrets.token_hex(8)}"

    def _parse(self) -> Hosts:
        """The URI's hosts, starting at a random one; BackendConfigError if the URI is unusable."""
        options = parse_uri(self.config.uri, self.config.instance_id)
        self._secrets, self._vhost, self.max_message_bytes = options.secrets, options.vhost, options.max_message_bytes
        self.topology = dataclasses.replace(self.topology, queue_type=options.queue_type)
        return Hosts(options.urls)

    async def start(self) -> None:
        """Connect to the first host of the URI's list that answers, from a random one; each gets the connect
        timeout. A refusal (credentials, TLS, vhost) ends the start at once: a cluster's nodes share their users.
        Hosts that did not answer are named in one line: in the error if none did (the daemon retries the start,
        and rate-limits what it logs), else in one warning."""
        if self._closing:
            raise BackendClosed("amqp: backend is closed")
        self._hosts = hosts = self._hosts or self._parse()
        down: list[BackendUnavailable] = []
        while True:
            try:
                connection, publish_channel = await self._connect(hosts)
                break
            except BackendUnavailable as exc:
                down.append(exc)
                hosts.next()
                if len(down) == len(hosts.urls):
                    if len(down) == 1:
                        raise
                    raise BackendUnavailable(f"{CANNOT_CONNECT}any host: {unreachable(down)}") from exc
        if down:
            log.warning("amqp: %s; connected to the next host", unreachable(down))
        self._connection, self._publish_channel = connection, publish_channel
        self._restore_after_losses(connection)
        log.info("amqp: connected to %s (%s mode)", self._where, self.config.mode)
        self._set_state(BackendState.CONNECTED)

    async def _connect(self, hosts: Hosts) -> tuple[BackingOffRobustConnection, AbstractRobustChannel]:
        """A connection to the current host and its publishing channel; BackendUnavailable or BackendRefused."""
        # What aio_pika.connect_robust() does, with our class and a handle to close if it fails.
        connection = BackingOffRobustConnection(hosts.current)
        cap = self.config.reconnect_max_delay
        connection.backoff = Backoff(min(connection.base_interval, cap), cap)
        try:
            # aiormq fails the channel's opening with CancelledError when it closes the connection itself (its
            # heartbeat found no frame for 3 intervals, the handshake's time included): a broker not there, not a
            # cancelled start, which would end the daemon's background connect as if stopped.
            with interruptions():
                async with asyncio.timeout(self.config.connect_timeout):
                    await connection.connect(timeout=self.config.connect_timeout)
                    channel = await connection.channel(publisher_confirms=True)
            # Only now: aio-pika reads reconnect_interval while it fails a first attempt too, and start() itself
            # moves to the next host then.
            connection.on_failure, connection.hosts = self._on_attempt_failed, hosts
            return connection, channel
        except BROKER_ERRORS as exc:  # TimeoutError is an OSError
            await discard(connection)
            reason = f"no answer within {self.config.connect_timeout:g}s" if isinstance(exc, TimeoutError) else None
            if isinstance(exc, Interrupted):
                reason = "the connection was closed as it opened: nothing heard from the broker for 3 heartbeats"
            vhost_refused = "Connection.OpenOk" in str(exc)  # aiormq only says it got a Connection.Close instead
            if vhost_refused:
                reason = "the broker refused to open the vhost (no such vhost, or no permission on it)"
            # ProbableAuthenticationError is the broker's 403 ACCESS_REFUSED; AuthenticationError, no common mechanism.
            refused = vhost_refused or tls_refused(exc) or isinstance(exc, REFUSALS)
            raise (BackendRefused if refused else BackendUnavailable)(
                f"{CANNOT_CONNECT}{self._where}: {reason or describe_error(exc, self._secrets)}"
            ) from exc
        except asyncio.CancelledError:  # the connection must not live on, reconnecting by itself
            await discard(connection)
            raise

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
            await discard(self._connection)
        self._set_state(BackendState.CLOSED)

    def _usable(self, channel: AbstractRobustChannel | None) -> AbstractRobustChannel:
        if self._closing:
            raise BackendClosed("amqp: backend is closed")
        if self.state is not BackendState.CONNECTED or channel is None:
            raise BackendUnavailable(f"amqp: not connected to {self._where}")
        return channel

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        channel = self._usable(self._publish_channel)
        self._check_sizes(bodies)
        if not bodies:
            return
        topology = self.topology
        try:
            # aiormq fails the declare, the channel or the confirmation with CancelledError when it closes the
            # connection: a lost publish, sent again, not a cancelled publisher.
            with interruptions():
                async with asyncio.timeout(self.publish_timeout):
                    exchange = self._exchanges.get(topic)
                    if exchange is None:
                        exchange = await channel.declare_exchange(
                            topology.exchange(topic),
                            aio_pika.ExchangeType.FANOUT,
                            durable=topology.durable,
                            auto_delete=False,
                            internal=False,
                        )
                        self._exchanges[topic] = exchange
                    # Straight to aiormq's writer, the whole batch in one write (backends/amqp_internals.py): its
                    # messages go out in order, and their confirms are awaited together. A persistent message is
                    # confirmed once every durable queue it was routed to has it on disk.
                    # aio-pika's abstract type leaves out the channel's state; its underlay is always aiormq's Channel.
                    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                    batch = await amqp_internals.publish(
                        underlay, exchange.name, bodies, self._properties, self._routing_key
                    )
                refusal = await confirmed(batch, self.publish_timeout)
        except TimeoutError as exc:
            raise PublishTimeout(f"amqp: the broker confirmed nothing for {self.publish_timeout:g}s") from exc
        except BROKER_ERRORS as exc:
            raise self._error("publish", exc) from exc
        if refusal is not None:
            raise self._error("publish", refusal) from refusal

    def _error(self, action: str, exc: BaseException) -> BackendError:
        """Translate an aio-pika/aiormq exception; no broker library type leaves this module."""
        if isinstance(exc, DeliveryError):
            return BackendError(f"amqp: {action}: the broker refused the message (nack)")
        if isinstance(exc, AMQPChannelError):  # the broker closed the channel over this request
            return BackendError(f"amqp: {action} failed: {describe_error(exc, self._secrets)}")
        # A publish cut off may have reached the broker before the connection, and the confirm, were lost.
        lost = PublishUnconfirmed if action == "publish" else BackendUnavailable
        if isinstance(exc, Interrupted):
            return lost(f"amqp: {action} interrupted: connection to {self._where} lost")
        if isinstance(exc, TimeoutError):
            return lost(f"amqp: {action}: no answer from {self._where}")
        return lost(f"amqp: {action} failed, {self._where} unreachable: {describe_error(exc, self._secrets)}")

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        self._usable(self._publish_channel)
        self.topology.exchange(topic)  # a key that cannot name an exchange is a config error, raised here
        connection = self._connection
        assert connection is not None  # set with the publish channel
        subscription: AmqpSubscription | None = None
        channel: AbstractRobustChannel | None = None
        try:
            with interruptions():
                async with asyncio.timeout(self.config.connect_timeout), self._attach_lock:
                    channel = await connection.channel(publisher_confirms=False)
                    await channel.set_qos(prefetch_count=DEFAULT_PREFETCH)
                    channel.reopen_callbacks.add(self._on_reopened)  # aio-pika reopens channels, not our queues
                    subscription = self.subscription_class(
                        topic,
                        handler,
                        self.topology,
                        channel,
                        forget=self._forget,
                        restore=self._restore_wanted.set,
                        own=None if self.broker_echoes else self._routing_key,
                    )
                    self._subscriptions.append(subscription)
                    await subscription.attach()
        except BROKER_ERRORS as exc:  # TimeoutError is an OSError
            if subscription is not None:
                await subscription.unsubscribe()  # closes the channel too
            elif channel is not None:
                await discard(channel)
            raise self._error(f"subscribe to {topic!r}", exc) from exc
        return subscription

    def _forget(self, subscription: AmqpSubscription) -> None:
        self._subscriptions = [s for s in self._subscriptions if s is not subscription]


class AmqpDurableBackend(AmqpBackend):
    """Durable mode: one durable queue per instance (`backends.amqp_topology`), redelivery of what a handler failed
    on (`backends.amqp_subscription.AmqpDurableSubscription`)."""

    features: ClassVar[frozenset[Feature]] = frozenset({Feature.DURABLE})
    subscription_class: ClassVar[type[AmqpSubscription]] = AmqpDurableSubscription
