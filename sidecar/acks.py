"""How syncar tells an app what became of its publishes at the broker: an `ack` (or a refusal) for each publish that
asked, or, for an app that asked in `hello` (`"barriers": true`), one `ack` for many (`Barriers`, which keeps a
connection's count either way: what an app that ended its input is still owed).

Such an app still sends `"ack": true` with each publish, and hears at once of each one refused (`nack`), but not of
each one accepted: it sends a `barrier` frame now and then, and syncar answers it with an `ack` of the barrier's id
once every publish before it on the connection is settled, accepted by the broker or refused. At 1,000 events/s the
Node plugin spent 50-100 us of the app's CPU on each `ack` (a socket read, a callback, a JSON parse), the daemon a
frame written per event. The outbox settles publishes in the order they came, so counting them is enough.

What waits for the broker holds the app's connection weakly: an app gone with answers owed has nowhere to hear them,
and its connection, with what it held (up to a whole unfinished line, --max-frame-bytes), is not kept for them while
the outbox counts 256 bytes an ack (`--outbox-bytes`).
"""

from __future__ import annotations

import weakref
from collections import deque
from functools import partial
from typing import cast

from sidecar import protocol
from sidecar.errors import FrameError
from sidecar.outbox import Done
from sidecar.protocol import ErrorCode, Publish
from sidecar.subscriber import Subscriber


def _answer(publish: Publish, error: tuple[ErrorCode, str] | None) -> bytes:
    # A publish asks for an ack only with an id (sidecar.protocol checks it).
    return protocol.ack(cast(str, publish.id)) if error is None else protocol.publish_refused(publish, *error)


#: Barriers of one connection waiting for the broker at most: each is kept until then (the Node plugin sends one at a
#: time), and an app sending them in a loop while the broker is away would otherwise grow the daemon without bound.
MAX_WAITING_BARRIERS = 64


class Barriers:
    """One connection's publishes that asked for an ack: each answered once settled, or, if its hello asked for
    barriers (`by_barrier`), counted for its barriers waiting for them. Its connection is held weakly (above)."""

    __slots__ = ("_client", "_close_when_settled", "_queued", "_settled", "_waiting", "by_barrier")

    def __init__(self, client: Subscriber) -> None:
        self.by_barrier = False
        self._queued = 0  # publishes with an ack handed to the outbox
        self._settled = 0  # of those, the ones whose fate the outbox told, in the order they came
        waiting: deque[tuple[int, str]] = deque()  # (publishes queued before it, id) of each barrier
        self._waiting = waiting
        # Its app gone, no barrier is answered: their ids go at once, not when the broker settles what they wait for.
        self._client = weakref.ref(client, lambda _: waiting.clear())
        self._close_when_settled = False

    @property
    def owing(self) -> bool:
        """Whether a publish that asked for an ack (and so any barrier) is still waiting for the broker."""
        return self._settled != self._queued

    def close_when_settled(self) -> None:
        """Close the connection once nothing is `owing` (its app ended its input and waits for the answers)."""
        self._close_when_settled = True

    def answer(self, publish: Publish) -> Done:
        """What to call once `publish`, about to be queued, is accepted or refused by the broker (refused before it
        is queued: `take_back`)."""
        self._queued += 1
        return partial(self._settle, publish)

    def _settle(self, publish: Publish, error: tuple[ErrorCode, str] | None) -> None:
        self._settled += 1
        client = self._client()
        if client is None:
            return
        if error is not None or not self.by_barrier:
            client.send(_answer(publish, error))
        waiting = self._waiting
        while waiting and waiting[0][0] <= self._settled:
            client.send(protocol.ack(waiting.popleft()[1]))
        if self._close_when_settled and not self.owing:
            client.close()

    def take_back(self) -> None:
        """The publish just counted by `answer()` was refused before it was queued (and told so): no longer counted,
        so that it cannot stand in for an earlier publish still waiting for the broker."""
        self._queued -= 1

    def barrier(self, barrier_id: str) -> bytes | None:
        """The `ack` of `barrier_id` to send now, if no publish before it is waiting; else None, and it is sent once
        every one is settled."""
        if not self.owing:
            return protocol.ack(barrier_id)
        if len(self._waiting) < MAX_WAITING_BARRIERS:
            self._waiting.append((self._queued, barrier_id))
            return None
        waiting = f"{MAX_WAITING_BARRIERS} barriers already wait for the broker"
        raise FrameError(ErrorCode.RATE_LIMITED, f"barrier: {waiting}; send the next once one is answered")
