"""The events the Python client received and has not yet handed to its app: in the order they came, at most
`max_events` of them (then the client reads no more and the daemon sees a slow client instead of this process
growing), duplicates dropped, and then the end once the client is closed. Standard library only, as the client is."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sidecar.client_types import ClientError, Event
from sidecar.seen import SeenIds

#: Event ids remembered to drop duplicates (redelivered after a daemon restart).
DEDUP_WINDOW = 10_000

_CLOSED = object()


class ReceivedEvents:
    def __init__(self, max_events: int, *, dedup: bool) -> None:
        self._queue: asyncio.Queue[Event | object] = asyncio.Queue(max_events)
        self._seen = SeenIds(DEDUP_WINDOW) if dedup else None

    async def put(self, frame: dict[str, Any]) -> None:
        """Keep the event of an `event` frame for the app, unless seen already; wait while `max_events` wait."""
        origin = frame.get("origin")
        # After a daemon restart, durable mode may hand us again what the old daemon already did.
        if origin is not None and self._seen is not None and not self._seen.add(origin, frame["id"]):
            return
        await self._queue.put(Event.of(frame))

    def end(self) -> None:
        """The client is closed: the app's iteration ends once it has had what came before."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_CLOSED)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                return
            assert isinstance(item, Event)
            yield item

    async def next(self, timeout: float | None) -> Event:
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if not isinstance(item, Event):
            raise ClientError("client closed")
        return item
