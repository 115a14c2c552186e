"""The app protocol, version 1: every frame syncar writes, and the frames apps write but `hello` (sidecar.hello).

`publish` is the hot path: msgspec decodes it straight into a `Publish`, its
`data` and `context` kept as the JSON bytes they came in. Anything it does not
take (another frame type, or a bad publish) goes the slow way, through
`decode`, which says what is wrong. See docs/protocol.md for the prose version.
"""

from __future__ import annotations

import binascii
import re
from enum import StrEnum
from typing import Any, cast

import msgspec
import orjson

from sidecar import MAX_ID_LENGTH, PROTOCOL_VERSION
from sidecar.codec import NULL, Event, decode_json, encode_spliced
from sidecar.errors import FrameError
from sidecar.framing import HEAD_BYTES


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    FRAME_TOO_LARGE = "frame_too_large"
    TRUNCATED_FRAME = "truncated_frame"
    UNSUPPORTED_VERSION = "unsupported_version"
    SLOW_CLIENT = "slow_client"
    TOO_MANY_CLIENTS = "too_many_clients"
    CLIENT_ID_IN_USE = "client_id_in_use"
    RESUME_GAP = "resume_gap"
    OUTBOX_FULL = "outbox_full"
    UNCONFIRMED = "unconfirmed"
    TOO_LARGE_FOR_BROKER = "too_large_for_broker"
    STOPPING = "stopping"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    INVALID_TRACE_CONTEXT = "invalid_trace_context"


# -- the frames syncar writes -----------------------------------------------------------------


def encode(frame: dict[str, Any]) -> bytes:
    """One frame as a line of JSON."""
    return orjson.dumps(frame, option=orjson.OPT_APPEND_NEWLINE)


def welcome(
    *,
    instance: str,
    backend: str,
    broker_up: bool,
    epoch: str,
    seq: int,
    client_id: str,
    resumed: bool,
    max_frame_bytes: int,
    node: str | None = None,
    barriers: bool = False,
) -> bytes:
    """The answer to the first frame; `node`, the broker node reached, as in `status`; `barriers`, that the client's
    publishes are acknowledged by barrier (sidecar.acks), as it asked."""
    frame: dict[str, Any] = {
        "type": "welcome",
        "version": PROTOCOL_VERSION,
        "instance": instance,
        "backend": backend,
        "broker": "up" if broker_up else "down",
        "epoch": epoch,
        "seq": seq,
        "client_id": client_id,
        "resumed": resumed,
        "max_frame_bytes": max_frame_bytes,
    }
    if node is not None:
        frame["node"] = node
    if barriers:
        frame["barriers"] = True
    return encode(frame)


def status(*, backend: str, broker_up: bool, outbox: int, stopping: bool = False, node: str | None = None) -> bytes:
    """The broker's state (and the node reached, while up); with `stopping`, the last frame before the daemon closes
    the connection."""
    frame: dict[str, Any] = {
        "type": "status",
        "broker": "up" if broker_up else "down",
        "backend": backend,
        "outbox": outbox,
    }
    if node is not None:
        frame["node"] = node
    if stopping:
        frame["stopping"] = True
    return encode(frame)


def event(seq: int, origin: bytes, part: bytes) -> bytes:
    """An `event` frame, from the JSON of its origin and of the event itself (`{"id": ..., ...}`, as the codec made
    it): joined as bytes, since it is made for every event delivered."""
    return b'{"type":"event","seq":%d,"origin":%s,%s\n' % (seq, origin, part[1:])


def received_event(seq: int, origin: bytes, event: Event) -> bytes:
    """The frame `event(seq, origin, codec.encode(event))` would make, encoded straight into it: for an event from
    the broker, whose JSON nothing else needs."""
    return encode_spliced(b'{"type":"event","seq":%d,"origin":%b,' % (seq, origin), event)


def gap(*, origin: str, run: str, first: int, last: int, reason: str) -> bytes:
    """Events of `origin` this daemon never got from the broker: sequence numbers `first` to `last` of its `run`."""
    return encode(
        {
            "type": "gap",
            "origin": origin,
            "missed": last - first + 1,
            "first": first,
            "last": last,
            "run": run,
            "reason": reason,
        }
    )


def ack(event_id: str) -> bytes:
    return encode({"type": "ack", "id": event_id})


def publish_refused(publish: Publish, code: ErrorCode, message: str) -> bytes:
    """The frame that tells a client its publish will not reach the broker (or may not have: `unconfirmed`): a `nack`
    if it asked for acks, else an `error` with the publish's id."""
    if publish.ack:
        return encode({"type": "nack", "id": publish.id, "code": code, "message": message})
    return error(code, message, id=publish.id)


def error(code: ErrorCode, message: str, **extra: Any) -> bytes:
    return encode({"type": "error", "code": code, "message": message, **extra})


PONG = encode({"type": "pong"})


# -- the frames apps write ---------------------------------------------------------------------


# JSON strings and the punctuation around them; numbers, literals and white space are not needed to find a key.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]:,]')


def readable_id(line: bytes) -> str | None:
    """The top-level string `id` within the first `HEAD_BYTES` of a frame syncar refuses, for the `error` answering
    it; None if there is none there. The line need not be JSON as a whole (it may be cut, or over the size limit)."""
    depth, key, value_of_id = 0, b"", False
    for match in _TOKENS.finditer(line, 0, HEAD_BYTES):
        token = match[0]
        if token[0] == 0x22 and depth == 1:  # a string in the top-level object: a key, or the value after one
            if value_of_id:
                try:
                    found = orjson.loads(token)
                except orjson.JSONDecodeError:
                    return None
                return found if isinstance(found, str) else None
            key = token
        elif token == b":":
            value_of_id = depth == 1 and key == b'"id"'
            continue
        elif token in (b"{", b"["):
            depth += 1
        elif token in (b"}", b"]"):
            depth -= 1
        value_of_id = False
    return None


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line into a frame object.

    Raises:
        FrameError: not JSON, or not an object with a string `type`.
    """
    try:
        frame = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise FrameError(ErrorCode.INVALID_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise FrameError(ErrorCode.INVALID_FRAME, f"frame must be a JSON object, got {type(frame).__name__}")
    if not isinstance(frame.get("type"), str):
        raise FrameError(ErrorCode.INVALID_FRAME, "frame has no string field 'type'")
    return frame


class Publish(msgspec.Struct, gc=False):
    type: str
    event: str
    path: str
    data: msgspec.Raw = NULL
    context: msgspec.Raw = NULL
    id: str | None = None
    ack: bool = False
    bin: str | None = None
    traceparent: str | None = None  # W3C trace context, checked by `trace_problem` only when given
    tracestate: str | None = None


_publish_decoder = msgspec.json.Decoder(Publish)


def _publish_problem(event: object, path: object, event_id: object, ack: object) -> str | None:
    """What is wrong with a publish's fields, or None: the one statement of the rules, for both paths below."""
    if not isinstance(event, str) or not event:
        return "publish: 'event' must be a non-empty string"
    if not isinstance(path, str) or not path:
        return "publish: 'path' must be a non-empty string"
    if event_id is not None and (not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_ID_LENGTH):
        return f"publish: 'id' must be a string of 1 to {MAX_ID_LENGTH} characters"
    if not isinstance(ack, bool):
        return "publish: 'ack' must be true or false"
    if ack and event_id is None:
        return "publish: 'ack' needs an 'id' to acknowledge"
    return None


def _binary_problem(binary: object, data: msgspec.Raw, context: msgspec.Raw) -> str | None:
    """What is wrong with a publish's `bin` (when it has one), or None."""
    if binary is None:
        return None
    if not isinstance(binary, str) or not binary:
        return "publish: 'bin' must be a non-empty base64 string"
    try:
        binascii.a2b_base64(binary, strict_mode=True)
    except binascii.Error as exc:
        return f"publish: 'bin' is not base64 ({exc})"
    if data != NULL or context != NULL:
        return "publish: 'bin' carries the whole event: 'data' and 'context' must be null or left out"
    return None


def without_trace(publish: Publish) -> Publish:
    """`publish` without its trace context: what is relayed when the context is malformed (W3C Trace Context: an
    invalid traceparent is ignored, its tracestate with it)."""
    return msgspec.structs.replace(publish, traceparent=None, tracestate=None)


def _valid(publish: Publish) -> bool:
    return (
        publish.type == "publish"
        and _publish_problem(publish.event, publish.path, publish.id, publish.ack) is None
        and _binary_problem(publish.bin, publish.data, publish.context) is None
    )


def fast_publish(line: bytes) -> Publish | None:
    """`line` as a valid `publish`, or None if it is anything else (which `decode` and `parse_publish` explain)."""
    publish = decode_json(_publish_decoder, line)
    return publish if publish is not None and _valid(publish) else None


def fast_publishes(data: bytes, start: int, end: int) -> list[Publish] | None:
    """The lines of `data[start:end]` (whole lines: `end` is just after a line feed) as valid publishes, decoded in one
    call; None unless each line is exactly one publish that `fast_publish` takes (then each goes its own way).

    A read of 200 publish frames (256 B payloads) cost 2.5-2.8 us a frame against 4.2-4.6 line by line: no copy of
    each line, no call per line. msgspec's `decode_lines` takes any white space between values, line feeds within a
    value too; but valid JSON has no raw line feed in a string, nor `}` then white space then `{` within a value, so
    when the line feeds are exactly those of `}\n{` between values, and one at the end, each line holds one value,
    as it would alone. The checks of `decode_json` are made once for all: UTF-8, no CR.
    """
    if not data.startswith(b"{", start) or data.find(b"\r", start, end) >= 0:
        return None
    lines, find = 0, data.find
    feed = find(b"\n", start, end)
    while feed >= 0:  # memchr from one to the next: bytes.count() looks at one byte at a time
        lines += 1
        if data[feed - 1] != 0x7D or (feed + 1 < end and data[feed + 1] != 0x7B):  # not `}\n{`, nor the last `}\n`
            return None
        feed = find(b"\n", feed + 1, end)
    view = memoryview(data)[start:end]
    try:
        if not data.isascii():
            str(view, "utf-8")
        publishes = _publish_decoder.decode_lines(view)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
    return publishes if len(publishes) == lines and all(map(_valid, publishes)) else None


def parse_barrier(frame: dict[str, Any]) -> str:
    """The id of a `barrier` frame.

    Raises:
        FrameError: it has no id of 1 to MAX_ID_LENGTH characters.
    """
    barrier_id = frame.get("id")
    if not isinstance(barrier_id, str) or not 0 < len(barrier_id) <= MAX_ID_LENGTH:
        raise FrameError(ErrorCode.INVALID_FRAME, f"barrier: 'id' must be a string of 1 to {MAX_ID_LENGTH} characters")
    return barrier_id


def parse_publish(frame: dict[str, Any]) -> Publish:
    """Validate a `publish` frame that `fast_publish` did not take, to say what is wrong with it.

    Raises:
        FrameError: a required field is missing or of the wrong type.
    """
    event, path, event_id, ack = frame.get("event"), frame.get("path"), frame.get("id"), frame.get("ack", False)
    data, context = msgspec.Raw(orjson.dumps(frame.get("data"))), msgspec.Raw(orjson.dumps(frame.get("context")))
    problem = _publish_problem(event, path, event_id, ack) or _binary_problem(frame.get("bin"), data, context)
    if problem is not None:
        raise FrameError(ErrorCode.INVALID_FRAME, problem)
    # _publish_problem has checked the types.
    return Publish(
        "publish",
        cast(str, event),
        cast(str, path),
        data,
        context,
        cast(str | None, event_id),
        cast(bool, ack),
        cast(str | None, frame.get("bin")),
        # Not a string: "", which `tracecontext.problem` refuses: the event still goes, without its trace context.
        *(_string_or_empty(frame.get(name)) for name in ("traceparent", "tracestate")),
    )


def _string_or_empty(value: object) -> str | None:
    return value if value is None or isinstance(value, str) else ""
