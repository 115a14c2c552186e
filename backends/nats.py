"""The NATS backend, one class per mode, both on `backends.nats_connection`'s one connection per daemon.

`NatsBackend`, broadcast mode: core NATS subjects. The subject is the topic (`--key`, default `feathers-sync`), as
in feathers-sync 3.x's nats adapter; nats-py restores the subscriptions after its own reconnects.
`NatsJetStreamBackend`, durable mode: JetStream, a stream per topic and a durable consumer per instance
(`backends.nats_jetstream`, `backends.nats_consumer`); the consumers are resumed after every reconnect.
URI: see `backends.nats_connection` and docs/backends/nats.md.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import ClassVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSub

from backends.base import (
    BackendConfig,
    BackendError,
    BackendUnavailable,
    Feature,
    Handler,
    Message,
    StateCallback,
    Subscription,
)
from backends.nats_common import CONNECTION_ERRORS, describe
from backends.nats_connection import NatsConnection
from backends.nats_consumer import DurableSubscription
from backends.nats_internals import deliver_from_reader, stop_delivering
from backends.nats_jetstream import JetStreamPublisher

__all__ = ["NatsBackend", "NatsJetStreamBackend"]

log = logging.getLogger(__name__)


class NatsSubscription(Subscription):
    """A core NATS subscription; nats-py replays it after its own reconnects, `attach()` puts it on a new client."""

    def __init__(self, topic: str, handler: Handler, *, forget: Callable[[NatsSubscription], None]) -> None:
        self.topic, self._handler, self._forget = topic, handler, forget
        self._sub: NatsSub | None = None
        self._client: Client | None = None  # the client `_sub` is on

    async def attach(self, client: Client) -> None:
        # Delivered by nats-py's reader as it parses, each message in turn: in order. nats-py's callback (its
        # subscription's Task) only has what came before the route was made.
        self._sub = sub = await client.subscribe(self.topic, cb=self._queued)
        self._client = client
        deliver_from_reader(client, sub, self._deliver)

    async def _queued(self, msg: Msg) -> None:
        await self._deliver(msg.data)

    async def _deliver(self, payload: bytes) -> None:
        try:
            await self._handler(Message(payload))
        except Exception as exc:
            log.error("nats: subscriber failed, message dropped: %s", exc)
            log.debug("nats: subscriber failure", exc_info=True)

    async def unsubscribe(self) -> None:
        self._forget(self)
        sub, self._sub = self._sub, None
        if sub is not None and self._client is not None:
            stop_delivering(self._client, sub)
        if sub is not None:
            # Closed or reconnecting: nats-py drops the subscription locally and does not restore it.
            with contextlib.suppress(*CONNECTION_ERRORS):
                await sub.unsubscribe()


class NatsBackend(NatsConnection[NatsSubscription]):
    """Broadcast mode: core NATS subjects, at most once."""

    name: ClassVar[str] = "nats"
    #: Core NATS can leave out what our own connection published (no_echo); a JetStream consumer gets everything.
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.NO_ECHO, Feature.IN_ORDER})

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        # Written with the PING that confirms them, not through nats-py's publish(): see nats_internals. A bad
        # subject never gets here: subscribe() refused it at startup.
        await self._confirm(self._sized(bodies), self._lost, topic, bodies)

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        client = self._usable()
        subscription = NatsSubscription(topic, handler, forget=self._forget)
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

    async def _reattach(self, client: Client) -> None:
        for subscription in self._subscriptions:
            await subscription.attach(client)

    # _resume: nothing; nats-py replays core subscriptions on its own reconnects.
    # _drain: nothing; every publish was confirmed before it returned, and messages nats-py still holds for a
    # subscriber are dropped (at most once).


class NatsJetStreamBackend(NatsConnection[DurableSubscription]):
    """Durable mode: JetStream, at least once, in order; the relay drops the duplicates."""

    name: ClassVar[str] = "nats"
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.DURABLE})

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self._publisher: JetStreamPublisher | None = None  # made by start(), once the servers are known

    async def start(self) -> None:
        await super().start()
        self._publisher = JetStreamPublisher(self.config, self.where, confirm=self._confirm)

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        client = self._sized(bodies)
        assert self._publisher is not None  # a client means start() succeeded
        await self._publisher.publish(client, topic, bodies, self._lost)

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        client = self._usable()
        durable = DurableSubscription(
            topic, handler, self.config, self.where, current_client=self.current_client, forget=self._forget
        )
        try:
            await durable.attach(client)
        except BackendError:
            await durable.unsubscribe()
            raise
        self._subscriptions.append(durable)
        return durable

    # _reattach: nothing; _resume restores the consumers, in the background.

    def _resume(self) -> None:
        # In the background: nothing waits in the stream meanwhile, and JetStream may need a moment after a restart.
        for subscription in self._subscriptions:
            subscription.restore_soon()

    async def _drain(self, client: Client | None) -> None:
        for subscription in list(self._subscriptions):
            await subscription.unsubscribe()
        if client is not None and client.is_connected:
            # The last acknowledgements must reach the server, or their messages come again next time.
            with contextlib.suppress(BackendError):
                await self._confirm(client, self._lost)
