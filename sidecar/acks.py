"""How syncar tells an app what became of its publishes at the broker: an `ack` (or a refusal) for each publish that
asked (`each`), or, for an app that asked in `hello` (`"barriers": true`), one `ack` for many (`Barriers`).

Such an app still sends `"ack": true` with each publish, and hears at once of each one refused (`nack`), but not of
each one accepted: it sends a `barrier` frame now and then, and syncar answers it with an `ack` of the barrier's id
once every publish before it on the connection is settled, accepted by the broker or refused. At 1,000 events/s the
Node plugin spent 50-100 us of the app's CPU on each `ack` (a socket read, a callback, a JSON parse), the daemon a
frame written per event. The outbox settles publishes in the order they came, so counting them is enough.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import cast

from sidecar import protocol
from sidecar.errors import FrameError
from sidecar.outbox import Done
from sidecar.protocol import ErrorCode, Publish
from sidecar.subscriber import Subscriber


def each(client: Subscriber, publish: Publish) -> Done:
    """What to call once `publish` is accepted or refused: tells `client` at once."""
    return partial(_tell, client, publish)


def _tell(client: Subscriber, publish: Publish, error: tuple[ErrorCode, str] | None) -> None:
    # A publish asks for an ack only with an id (sidecar.protocol checks it).
    client.send(protocol.ack(cast(str, publish.id)) if error is None else protocol.publish_refused(publish, *error))


#: Barriers of one connection waiting for the broker at most: each is kept until then (the Node plugin sends one at a
#: time), and an app sending them in a loop while the broker is away would otherwise grow the daemon without bound.
MAX_WAITING_BARRIERS = 64


class Barriers:
    """One connection's publishes that asked for an ack, and its barriers waiting for them."""

    __slots__ = ("_client", "_queued", "_settled", "_waiting")

    def __init__(self, client: Subscriber) -> None:
        self._client = client
        self._queued = 0  # publishes with an ack handed to the outbox
        self._settled = 0  # of those, the ones whose fate the outbox told, in the order they came
        self._waiting: deque[tuple[int, str]] = deque()  # (publishes queued before it, id) of each barrier

    def answer(self, publish: Publish) -> Done:
        """What to call once `publish`, about to be queued, is accepted or refused by the broker (refused before it
        is queued: `take_back`)."""
        self._queued += 1
        return partial(self._settle, publish)

    def _settle(self, publish: Publish, error: tuple[ErrorCode, str] | None) -> None:
        self._settled += 1
        client = self._client
        if error is not None:
            client.send(protocol.publish_refused(publish, *error))
        waiting = self._waiting
        while waiting and waiting[0][0] <= self._settled:
            client.send(protocol.ack(waiting.popleft()[1]))

    def take_back(self) -> None:
        """The publish just counted by `answer()` was refused before it was queued (and told so): no longer counted,
        so that it cannot stand in for an earlier publish still waiting for the broker."""
        self._queued -= 1

    def barrier(self, barrier_id: str) -> None:
        """Answer `barrier_id` once every publish before it is settled: now, if none is waiting."""
        if self._settled == self._queued:
            self._client.send(protocol.ack(barrier_id))
        elif len(self._waiting) < MAX_WAITING_BARRIERS:
            self._waiting.append((self._queued, barrier_id))
        else:
            waiting = f"{MAX_WAITING_BARRIERS} barriers already wait for the broker"
            raise FrameError(ErrorCode.RATE_LIMITED, f"barrier: {waiting}; send the next once one is answered")
