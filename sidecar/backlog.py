"""Durable mode's hold on the broker's backlog while no app is connected.

The broker keeps what an instance has not handled; the replay buffer keeps only `--replay-events` /
`--replay-bytes`. A daemon with no app to deliver to that went on reading would acknowledge the backlog into a
buffer that overflows, and the app, back later, would get `resume_gap` for events the broker had kept for it. So
while no app is connected, the relay's handler waits here before a message that would push out of the buffer an
event no app has had: the backend's consume loop, which awaits the handler, then takes and acknowledges nothing
more, and the rest stays on the broker until an app connects.
"""

from __future__ import annotations

import asyncio
import logging

from sidecar.codec import Batch
from sidecar.metrics import Metrics
from sidecar.replay import ReplayBuffer

log = logging.getLogger(__name__)

#: What a frame adds to an event's JSON in a broker message, besides its origin: `{"type":"event","seq":<n>,...`
FRAME_OVERHEAD = 48


class Backlog:
    """Whether the relay may take one more message from the broker now, and the wait until it may."""

    def __init__(self, replay: ReplayBuffer, metrics: Metrics) -> None:
        self._replay = replay
        self._metrics = metrics
        self._apps = asyncio.Event()  # set while an app is connected: everything goes to it
        self._connected: dict[object, int] = {}  # the apps connected, each with the seq it has had all after
        self._had: int | None = None  # since the first of them joined: the least seq one of them left having had
        self._covered = False  # and whether one of them had every event from the delivered mark on
        self._stopping = False

    def app_joined(self, app: object, since: int) -> None:
        """`app` connected, and will have had every event after `since` (its resume cursor, else the seq now)."""
        self._connected[app] = since
        self._apps.set()

    def app_left(self, app: object, had: int) -> None:
        """`app` left having had every event after its `since` up to `had` (what was sent to it). Once the last one
        has left, the delivered mark moves up to what every one of them had, if one of them had all from the mark
        on: an app that came and went at once, or one that joined with nothing old, does not mark the buffer had."""
        since = self._connected.pop(app, None)
        if since is None:
            return  # left already (cut while catching up, then closed)
        self._had = had if self._had is None else min(self._had, had)
        self._covered |= since <= self._replay.delivered
        if self._connected:
            return
        if self._covered:
            self._replay.mark_delivered(self._had)
        self._had, self._covered = None, False
        self._apps.clear()

    async def room(self, batch: Batch, size: int) -> None:
        """Return once `batch`, a broker message of `size` bytes, can go into the replay buffer as frames: at once
        while an app is connected or the buffer has room, else when an app connects.

        Raises:
            asyncio.CancelledError: the daemon is stopping; the message is not handled, so not acknowledged.
        """
        events = len(batch.events)
        if self._replay.room(events, size + events * (FRAME_OVERHEAD + len(batch.origin or ""))):
            return
        if self._apps.is_set() and not self._stopping:
            return
        if self._stopping:
            raise asyncio.CancelledError
        self._metrics.backlog_paused.set(1)
        log.info(
            "no app connected and the replay buffer full with %d events they have not had: leaving the rest of the "
            "backlog on the broker until an app connects",
            self._replay.undelivered,
        )
        try:
            await self._apps.wait()
        finally:
            self._metrics.backlog_paused.set(0)
        if self._stopping:
            raise asyncio.CancelledError
        log.info("an app connected: taking the backlog from the broker again")

    def stop(self) -> None:
        """The daemon is stopping: a message waiting here is left to the broker, for the next run."""
        self._stopping = True
        self._apps.set()
