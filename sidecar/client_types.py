"""What the Python client (sidecar.client) raises and hands out: its errors, and the events and gaps it is told of,
made from the daemon's frames (docs/protocol.md); and the check of the `client_id` it is given. Standard library only,
as the client is."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from sidecar import MAX_ID_LENGTH


def checked_client_id(client_id: object) -> str:
    """`client_id` if the daemon takes it in a `hello` (sidecar.hello.Hello: 1 to MAX_ID_LENGTH characters).

    Raises:
        ValueError: it would not: the daemon would close the connection with `invalid_frame`, at every reconnect.
    """
    if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_ID_LENGTH:
        raise ValueError(f"client_id must be a string of 1 to {MAX_ID_LENGTH} characters")
    return client_id


class ClientError(Exception):
    pass


class PublishRefused(ClientError):
    """The event will not reach the broker: the daemon answered with `nack` or `error` (its `code`, e.g.
    `invalid_frame`, `outbox_full`), or the client knows it would (`frame_too_large`, checked before sending).
    `unconfirmed`: sent, but the connection was lost before the broker confirmed, and not sent again (feathers-sync
    codec): it may have reached other instances. `stopping` (only with `reconnect=False`: else the client sends it
    again after the reconnect): the daemon stopped before its broker confirmed it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class AckTimeout(ClientError, TimeoutError):
    """No `ack` within the publish's timeout. If `queued`, the daemon has the event and did not refuse it: it waits
    in the daemon's outbox (the broker is down or slow) and may still go out. Otherwise it was not sent, and the client
    no longer holds it."""

    def __init__(self, message: str, *, queued: bool) -> None:
        super().__init__(message)
        self.queued = queued


class Refused(ClientError):
    """The daemon refused the client's `hello` and closed the connection: `client_id_in_use` (another open connection
    has this `client_id`). `connect()` raises it; a client refused when it reconnects logs it and tries again."""


class PendingFull(ClientError):
    """Disconnected, and `max_pending` publishes are already waiting."""


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    id: str
    origin: str | None
    event: str
    path: str
    data: Any
    context: Any
    time: float | None
    #: The whole event as an app's binary serializer made it (BSON, MessagePack); then data and context are None, and
    #: event and path are "" if it came from a feathers-sync app (docs/protocol.md).
    bin: bytes | None = None
    #: The W3C trace context it was published in, if its app gave one (syncar codec, or an app of the same daemon).
    traceparent: str | None = None
    tracestate: str | None = None

    @classmethod
    def of(cls, frame: dict[str, Any]) -> Event:
        """The event an `event` frame carries."""
        binary = frame.get("bin")
        return cls(
            frame["seq"],
            frame["id"],
            frame.get("origin"),
            frame["event"],
            frame["path"],
            frame.get("data"),
            frame.get("context"),
            frame.get("time"),
            None if binary is None else base64.b64decode(binary),
            frame.get("traceparent"),
            frame.get("tracestate"),
        )


@dataclass(frozen=True, slots=True)
class Gap:  # events of `origin` that went by on the bus and never reached the daemon (docs/protocol.md#gap)
    origin: str
    missed: int
    first: int  # the sequence numbers missed, `first` to `last`, of the origin's `run`
    last: int
    run: str
    reason: str  # lost or restart

    @classmethod
    def of(cls, frame: dict[str, Any]) -> Gap:
        """The gap a `gap` frame tells of."""
        return cls(*(frame[name] for name in ("origin", "missed", "first", "last", "run", "reason")))


@dataclass(frozen=True, slots=True)
class ResumeGap:  # this client's resume could not be served whole (docs/protocol.md#resuming)
    message: str  # why: the daemon restarted in broadcast mode, the client fell behind its replay buffer...
    seq: int  # the daemon's last seq when it answered
    #: Where the daemon counted them: how many events this client will not get, the daemon's seqs `first` to `last`
    #: (its own publishes and events its subscription would not want among them). None: not counted (what went by
    #: while no daemon ran is not known).
    missed: int | None = None
    first: int | None = None
    last: int | None = None

    @classmethod
    def of(cls, frame: dict[str, Any]) -> ResumeGap:
        """The gap a `resume_gap` error tells of."""
        return cls(frame.get("message", ""), frame["seq"], frame.get("missed"), frame.get("first"), frame.get("last"))
