"""The embedded backend: an in-process bus, no broker.

Every `LocalBackend` in a process with the same URI shares one bus, so the
daemons embedded in one process (the contract suite's baseline) see each
other, and a single daemon relays between the apps on its own socket. Like a
real broker, a publisher's own subscription gets its messages back; the relay
drops them as echoes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import ClassVar

from backends.base import (
    Backend,
    BackendClosed,
    BackendConfig,
    BackendState,
    Feature,
    Handler,
    Message,
    StateCallback,
    Subscription,
)

log = logging.getLogger(__name__)

# bus name (the URI) -> topic -> handlers, in subscription order. Public as a broker's state is to its operator:
# tests play the broker on it (a subscription dropped behind a daemon's back, tests/contract/test_watchdog.py).
BUSES: defaultdict[str, defaultdict[str, list[Handler]]] = defaultdict(lambda: defaultdict(list))


class LocalSubscription(Subscription):
    def __init__(self, handlers: list[Handler], handler: Handler) -> None:
        self._handlers = handlers
        self._handler: Handler | None = handler

    async def unsubscribe(self) -> None:
        if self._handler is not None:
            if self._handler in self._handlers:  # a bus that dropped it meanwhile is not an error
                self._handlers.remove(self._handler)
            self._handler = None


class LocalBackend(Backend):
    name: ClassVar[str] = "local"
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.IN_ORDER})

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        super().__init__(config, on_state=on_state)
        self._subscriptions: list[LocalSubscription] = []

    async def start(self) -> None:
        self._set_state(BackendState.CONNECTED)

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        if self.state is BackendState.CLOSED:
            raise BackendClosed("local: backend is closed")
        self._check_sizes(bodies)
        # Copy: a handler may unsubscribe while we iterate.
        handlers = list(BUSES[self.config.uri][topic])
        for body in bodies:
            message = Message(body)
            for handler in handlers:
                try:
                    await handler(message)
                except Exception as exc:
                    log.error("local: subscriber failed, message dropped for it: %s", exc)
                    log.debug("local: subscriber failure", exc_info=True)

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        if self.state is BackendState.CLOSED:
            raise BackendClosed("local: backend is closed")
        handlers = BUSES[self.config.uri][topic]
        handlers.append(handler)
        subscription = LocalSubscription(handlers, handler)
        self._subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()
        self._set_state(BackendState.CLOSED)
