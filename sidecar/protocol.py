"""The app protocol, version 1: frame shapes, their validation, and the frames syncar writes.

`publish` is parsed by hand because it is the hot path; the rare `hello` is
validated by pydantic. See docs/protocol.md for the prose version.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sidecar.errors import FrameError

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 256


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    FRAME_TOO_LARGE = "frame_too_large"
    TRUNCATED_FRAME = "truncated_frame"
    UNSUPPORTED_VERSION = "unsupported_version"
    SLOW_CLIENT = "slow_client"
    TOO_MANY_CLIENTS = "too_many_clients"
    RESUME_GAP = "resume_gap"
    OUTBOX_FULL = "outbox_full"
    TOO_LARGE_FOR_BROKER = "too_large_for_broker"
    SHUTTING_DOWN = "shutting_down"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"


def encode(frame: dict[str, Any]) -> bytes:
    """One frame as a line of JSON."""
    return orjson.dumps(frame, option=orjson.OPT_APPEND_NEWLINE)


def error(code: ErrorCode, message: str, **extra: Any) -> bytes:
    return encode({"type": "error", "code": code, "message": message, **extra})


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


@dataclass(slots=True)
class Publish:
    event: str
    path: str
    data: Any
    context: Any
    id: str | None
    ack: bool


def parse_publish(frame: dict[str, Any]) -> Publish:
    """Validate a `publish` frame.

    Raises:
        FrameError: a required field is missing or of the wrong type.
    """
    event = frame.get("event")
    path = frame.get("path")
    event_id = frame.get("id")
    ack = frame.get("ack", False)
    if not isinstance(event, str) or not event:
        raise FrameError(ErrorCode.INVALID_FRAME, "publish: 'event' must be a non-empty string")
    if not isinstance(path, str) or not path:
        raise FrameError(ErrorCode.INVALID_FRAME, "publish: 'path' must be a non-empty string")
    if event_id is not None and (not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_ID_LENGTH):
        raise FrameError(ErrorCode.INVALID_FRAME, f"publish: 'id' must be a string of 1 to {MAX_ID_LENGTH} characters")
    if not isinstance(ack, bool):
        raise FrameError(ErrorCode.INVALID_FRAME, "publish: 'ack' must be true or false")
    if ack and event_id is None:
        raise FrameError(ErrorCode.INVALID_FRAME, "publish: 'ack' needs an 'id' to acknowledge")
    return Publish(event, path, frame.get("data"), frame.get("context"), event_id, ack)


class Pattern(BaseModel):
    """Which events a client wants: shell-style patterns (`*`, `?`) on the service path and the event name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = "*"
    event: str = "*"


class Resume(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    epoch: str
    seq: int = Field(ge=0)


class Hello(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str
    version: int = PROTOCOL_VERSION
    client: str = Field("", max_length=200)
    client_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    subscribe: list[Pattern | str] | None = None
    resume: Resume | None = None
    echo: bool = False

    def patterns(self) -> list[Pattern] | None:
        """None means every event; a bare string is a path pattern."""
        if self.subscribe is None:
            return None
        return [Pattern(path=p) if isinstance(p, str) else p for p in self.subscribe]


def parse_hello(frame: dict[str, Any]) -> Hello:
    """Validate a `hello` frame.

    Raises:
        FrameError: a field has the wrong shape, or the version is not one syncar speaks.
    """
    try:
        hello = Hello.model_validate(frame)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise FrameError(ErrorCode.INVALID_FRAME, f"hello: {where}: {first['msg']}") from None
    if hello.version != PROTOCOL_VERSION:
        raise FrameError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"hello: protocol version {hello.version} is not supported; this syncar speaks {PROTOCOL_VERSION}",
        )
    return hello
