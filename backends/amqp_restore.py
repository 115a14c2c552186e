"""What the RabbitMQ backend does between losing its connection and being CONNECTED again.

aio-pika's robust connection reconnects (`backends.amqp_connection` points it at the next host and backs off) and
reopens its channels, re-declaring the exchanges declared on them; the queues, bindings and consumers of syncar's
subscriptions are this module's to bring back (`AmqpSubscription.attach`), and in durable mode the bindings of the
other instances' queues a crashed broker may have lost (`Topology.bind_others`). Only then is the backend CONNECTED
again, with the outage logged once when it began, summarised while it lasts and once when it ended
(`sidecar.logging.Outage`). A restore that fails is tried again, backing off up to `reconnect_max_delay`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustExchange

from backends.amqp_common import BROKER_ERRORS, interruptions
from backends.amqp_connection import BackingOffRobustConnection, Hosts, node_of
from backends.amqp_subscription import AmqpSubscription
from backends.amqp_topology import Topology
from backends.base import Backend, BackendConfig, BackendState, StateCallback, describe_error
from sidecar.backoff import Backoff
from sidecar.logging import Outage

log = logging.getLogger(__name__)


class AmqpRestoringBackend(Backend):
    """The state of a RabbitMQ backend's one connection (its channels, exchanges and subscriptions), and its
    restore after aio-pika has reconnected; connecting, publishing and subscribing are `backends.amqp.AmqpBackend`'s.
    """

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self.topology = Topology(config.mode, config.instance_id, config.retention, config.instance_ttl)
        self._connection: BackingOffRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractRobustExchange] = {}
        self._subscriptions: list[AmqpSubscription] = []
        self._peers_before_outage: list[str] = []
        self._attach_lock = asyncio.Lock()
        self._restore_wanted = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False
        self._outage = Outage(log)
        self._restore_backoff = Backoff(cap=config.reconnect_max_delay)
        self._hosts: Hosts | None = None
        self._vhost = "/"
        self._secrets: tuple[str, ...] = ()

    @property
    def node(self) -> str | None:
        """The host:port of the node reached, while connected."""
        return node_of(self._hosts.current) if self._hosts and self.state is BackendState.CONNECTED else None

    @property
    def _where(self) -> str:
        """The node connected to, or being tried, and the vhost, for messages; never the credentials."""
        return f"{node_of(self._hosts.current)} vhost {self._vhost!r}" if self._hosts else "the broker"

    def _restore_after_losses(self, connection: BackingOffRobustConnection) -> None:
        """From the first connect on: each loss of `connection` is logged, and what aio-pika does not restore is
        restored once it has reconnected (`_keep`)."""
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reopened)
        self._keeper = asyncio.create_task(self._keep(), name="syncar-amqp-restore")

    def _on_connection_lost(self, _sender: object, exc: BaseException | None) -> None:
        if self._closing or self._connection is None:
            return
        if self.state is BackendState.CONNECTED:
            # Who to bind again once back (_bind_others): the fleet forgets peers it does not hear for a while,
            # and during an outage it hears nobody.
            self._peers_before_outage = list(self.peer_instances())
            self._outage.began(
                "amqp: connection to %s lost (%s); reconnecting",
                self._where,
                describe_error(exc, self._secrets) if exc is not None else "closed",
            )
        self._set_state(BackendState.RECONNECTING)

    def _on_attempt_failed(self, exc: BaseException, delay: float) -> None:
        self._outage.failed(
            "amqp: reconnect to %s failed (%s); next attempt in %.1fs",
            self._where,
            describe_error(exc, self._secrets),
            delay,
        )

    def _on_reopened(self, _sender: object) -> None:  # the connection, or one subscription's channel alone
        self._restore_wanted.set()

    async def _keep(self) -> None:
        """Re-create queues, bindings and consumers once aio-pika has restored the connection and channels."""
        while True:
            await self._restore_wanted.wait()
            self._restore_wanted.clear()
            try:
                with interruptions():
                    await self._restore()
            except BROKER_ERRORS as exc:  # channel errors (AMQPChannelError) are AMQPErrors; TimeoutError an OSError
                delay = self._restore_backoff.next()
                self._outage.failed(
                    "amqp: subscribing again failed, retrying in %.1fs: %s", delay, describe_error(exc, self._secrets)
                )
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
        if self.topology.durable:
            await self._bind_others(publish_channel)
        # The connection may have dropped again meanwhile; then the next reconnect restores.
        if self._closing or not connection.connected.is_set() or publish_channel.is_closed:
            return
        self._outage.ended(
            "amqp: reconnected to %s after %.1fs (%d failed attempts); %d subscription(s) restored",
            self._where,
            self._outage.seconds,
            self._outage.failures,
            restored,
        )
        connection.backoff.reset()
        self._restore_backoff.reset()
        self._set_state(BackendState.CONNECTED)

    async def _bind_others(self, channel: AbstractRobustChannel) -> None:
        """Durable mode, before publishing resumes after a reconnect: the queues of the instances the fleet knew
        when the outage began or knows now, bound again (`Topology.bind_others`: a crashed broker can bring a queue
        back without its binding). If that fails, publishing resumes all the same, as it did before."""
        topics = {s.topic for s in self._subscriptions} | set(self._exchanges)
        instances = list(dict.fromkeys([*self._peers_before_outage, *self.peer_instances()]))
        if not topics or not instances:
            return
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                for topic in sorted(topics):
                    bound = await self.topology.bind_others(underlay.connection, topic, instances)
                    log.debug("amqp: %d of %d other instances' queues bound again to %r", bound, len(instances), topic)
        except BROKER_ERRORS as exc:
            log.warning(
                "amqp: binding again the queues of %d other instance(s) failed, publishing all the same: %s",
                len(instances),
                describe_error(exc, self._secrets),
            )
