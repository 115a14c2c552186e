"""The Python client's publishes on their way to the broker: the line each one is, its size against the daemon's
limit, and those the client holds until syncar acknowledged them (the Node plugin's twin is `lib/held.js`). No I/O
but the writes of `HeldPublishes.resend`; standard library and orjson only, as the client is."""

from __future__ import annotations

import asyncio
import base64
from collections import OrderedDict
from typing import Any

import orjson

from sidecar.client_types import ClientError, PublishRefused


def publish_line(
    event_id: str,
    path: str,
    event: str,
    data: Any,
    context: Any,
    *,
    ack: bool,
    traceparent: str | None,
    tracestate: str | None,
    bin: bytes | None,
) -> bytes:
    """The `publish` frame of one event, with its newline (docs/protocol.md#publish).

    Raises:
        ValueError: `bin` given with `data` or `context`.
    """
    frame: dict[str, Any] = {"type": "publish", "id": event_id, "path": path, "event": event, "data": data}
    if bin is not None:
        if data is not None or context is not None:
            raise ValueError("publish: a binary event (bin) carries the whole event: data and context must be None")
        frame["bin"] = base64.b64encode(bin).decode("ascii")
    # The optional fields go only when given: the daemon's defaults are the same, and the line stays short.
    optional = {"context": context, "ack": ack or None, "traceparent": traceparent, "tracestate": tracestate}
    frame.update((name, value) for name, value in optional.items() if value is not None)
    return orjson.dumps(frame, option=orjson.OPT_APPEND_NEWLINE)


def too_large(line: bytes, max_frame_bytes: int | None) -> PublishRefused | None:
    """The refusal the daemon would answer `line` with if it is over the size limit of the welcome."""
    if max_frame_bytes is None or len(line) - 1 <= max_frame_bytes:
        return None
    return PublishRefused(
        "frame_too_large",
        f"the publish is {len(line) - 1} bytes; syncar takes at most "
        f"{max_frame_bytes} (its --max-frame-bytes); not sent",
    )


class HeldPublishes:
    """Publishes not yet written, and those written with ack=True not yet acknowledged, in publish order, by event
    id; each with the future its `publish()` waits on, if it asked for an ack."""

    def __init__(self) -> None:
        self._held: OrderedDict[str, tuple[bytes, asyncio.Future[None] | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._held

    def hold(self, event_id: str, line: bytes, future: asyncio.Future[None] | None) -> None:
        """Keep `line` until it is written (`future` None) or until the daemon answers it (`settle`)."""
        self._held[event_id] = (line, future)

    def forget(self, event_id: str) -> None:
        """Drop the publish `event_id`, whose `publish()` stopped waiting."""
        self._held.pop(event_id, None)

    def settle(self, event_id: str, error: Exception | None) -> None:
        """The daemon answered the publish `event_id`: its `publish()` returns, or raises `error`."""
        entry = self._held.pop(event_id, None)
        if entry is None or entry[1] is None or entry[1].done():
            return
        if error is None:
            entry[1].set_result(None)
        else:
            entry[1].set_exception(error)

    def fail(self, error: ClientError) -> None:
        """No ack can come any more: fail what waits for one with `error`, drop what was never sent."""
        for _, future in self._held.values():
            if future is not None and not future.done():
                future.set_exception(error)
        self._held.clear()

    def resend(self, writer: asyncio.StreamWriter, max_frame_bytes: int | None) -> list[PublishRefused]:
        """Write to a daemon that just welcomed the client, in publish order, what was never written and what was
        written but not acknowledged; keep what waits for an ack. One over the daemon's `max_frame_bytes` (held
        before this daemon told its limit) is refused instead: the refusals are returned, for the log."""
        refused = []
        for event_id, (line, future) in list(self._held.items()):
            if (problem := too_large(line, max_frame_bytes)) is not None:
                self.settle(event_id, problem)
                refused.append(problem)
                continue
            writer.write(line)
            if future is None:
                del self._held[event_id]
        return refused
