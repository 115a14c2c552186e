"""What the relay decides when an app joins: whether it may (no other live connection holds its `client_id`,
`ClientIds`) and where its events start (`resume_point`)."""

from __future__ import annotations

import logging
import select
import socket

from sidecar import protocol
from sidecar.gaps import ResumeGap
from sidecar.hello import Resume
from sidecar.logging import RateLimitedLogger
from sidecar.metrics import Metrics
from sidecar.protocol import ErrorCode
from sidecar.replay import ReplayBuffer
from sidecar.subscriber import Subscriber

log = logging.getLogger(__name__)
refusals = RateLimitedLogger(log, interval=10.0)

IN_USE = (
    "another open connection to this syncar has this client_id: give each process its own client_id (two "
    "connections sharing one would each miss the other's events when they resume)"
)


#: Linux's; where there is none, only POLLHUP tells, and a reconnect racing its old socket's end may be refused once,
#: then welcomed at its client's next attempt.
RDHUP: int = getattr(select, "POLLRDHUP", 0)


def hung_up(sock: socket.socket) -> bool:
    """Whether the peer of `sock` has closed its side (or shut down its writing), whatever it sent before that is
    still unread: POLLRDHUP says so where a peek would see those bytes first."""
    poller = select.poll()
    poller.register(sock, RDHUP)  # POLLHUP and POLLERR are reported without asking
    return bool(poller.poll(0))


class ClientIds:
    """The `client_id` each joined app holds, so that a second connection naming one is refused.

    An app's own events are not replayed to it on resume (they are recognised by its `client_id`), so two
    connections sharing one would each miss, silently, what the other published while it was away.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._holders: dict[str, Subscriber] = {}

    def claim(self, client: Subscriber) -> bool:
        """Hold `client`'s `client_id` for it, or refuse it (an `error`, closed) if another connection whose app is
        still there holds it. One whose app is gone gives it up: a reconnect's `hello` can be read before the end of
        the connection it replaces (which is then read as usual, so what the app sent before it is not lost)."""
        holder = self._holders.get(client.client_id)
        if holder is not None and not holder.peer_gone():
            self._metrics.disconnects.labels(ErrorCode.CLIENT_ID_IN_USE).inc()
            refusals.warning(
                "in_use",
                "refused a connection (%s): its client_id is held by another open connection; "
                "each process needs its own client_id",
                client.id_scope,
            )
            client.close(protocol.error(ErrorCode.CLIENT_ID_IN_USE, IN_USE))
            return False
        self._holders[client.client_id] = client
        return True

    def release(self, client: Subscriber) -> None:
        if self._holders.get(client.client_id) is client:
            del self._holders[client.client_id]


def resume_point(
    resume: Resume | None, *, epoch: str, seq: int, durable: bool, replay: ReplayBuffer
) -> tuple[int | None, ResumeGap | None]:
    """Where a joining app's events start: the `seq` after which it gets what it missed (None: live events only),
    and what it missed that it cannot get (None: nothing)."""
    if resume is None:
        return None, None
    cursor: int | None = None
    gap: ResumeGap | None = None
    if resume.epoch != epoch:
        # The daemon restarted since: the client missed all of this run, and in broadcast mode whatever went by
        # while no daemon ran. In durable mode the broker kept that for this run to read.
        cursor = 0
        gap = None if durable else ResumeGap("the daemon restarted in broadcast mode")
    elif resume.seq > seq:
        gap = ResumeGap(f"seq {resume.seq} is beyond the last event of this run, {seq}")
    else:
        cursor = resume.seq
    if cursor is not None and replay.after(cursor) is None:
        # Every event is numbered into the buffer, so its oldest is the newest seq less what it holds: the app gets
        # those, and is told how many went before it came back.
        held_from = seq - len(replay) + 1
        why = "you fell further behind than the replay buffer holds" if gap is None else gap.why
        gap = ResumeGap(why, cursor + 1, held_from - 1)
        cursor = held_from - 1
    return cursor, gap
