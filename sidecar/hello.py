"""The `hello` frame, the first an app sends: the protocol version, the app's name and identity, the events it wants
(`Pattern`s, within bounds) and where it resumes (`Resume`). Rare, so validated by pydantic, which says in one line
what is wrong; the frames of every event are `sidecar.protocol`'s. See docs/protocol.md for the prose version.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sidecar import MAX_ID_LENGTH, PROTOCOL_VERSION
from sidecar.errors import FrameError
from sidecar.protocol import ErrorCode

#: Longest path or event pattern in `hello.subscribe`.
MAX_PATTERN_LENGTH = 256
#: Patterns with a wildcard inside a name a `hello` may list: each is a regex tried on every new path.
MAX_WILDCARD_PATTERNS = 8


class Pattern(BaseModel):
    """Which events a client wants: shell-style patterns (`*`, `?`) on the service path and the event name.

    `[` has no special meaning, and a `?` may not stand between two `*`: so that matching takes time linear in the
    name however the pattern is made (see subscriptions.Glob).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(default="*", max_length=MAX_PATTERN_LENGTH)
    event: str = Field(default="*", max_length=MAX_PATTERN_LENGTH)

    @field_validator("path", "event")
    @classmethod
    def _no_floating_question_mark(cls, value: str) -> str:
        if any("?" in middle for middle in value.split("*")[1:-1]):
            raise ValueError("a '?' may not stand between two '*' (put it before the first '*' or after the last)")
        return value

    @property
    def wildcard(self) -> bool:
        """Whether it has a wildcard inside a name (`api/*`), as opposed to an exact name or a whole `*`."""
        return _has_wildcard(self.path) or _has_wildcard(self.event)


def _has_wildcard(name: str) -> bool:
    return name != "*" and ("*" in name or "?" in name)


class Resume(BaseModel):
    # strict: JSON types as sent, so `"seq": true` or `"seq": "3"` is an error, not 1 or 3.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    epoch: str
    seq: int = Field(ge=0)


class Hello(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str
    version: int = Field(PROTOCOL_VERSION, strict=True)
    client: str = Field("", max_length=200)
    client_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    subscribe: list[Pattern] | None = None  # None: every event
    resume: Resume | None = None
    echo: bool = Field(False, strict=True)
    barriers: bool = Field(False, strict=True)  # its acks by barrier (sidecar.acks)

    @field_validator("subscribe", mode="before")
    @classmethod
    def _bare_paths(cls, value: Any) -> Any:
        """A bare string is a path pattern."""
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value


def parse_hello(frame: dict[str, Any], max_patterns: int) -> Hello:
    """Validate a `hello` frame.

    Raises:
        FrameError: a field has the wrong shape, the version is not one syncar speaks, or `subscribe` lists more
            patterns than `max_patterns` or more than MAX_WILDCARD_PATTERNS with wildcards.
    """
    subscribe = frame.get("subscribe")
    if isinstance(subscribe, list) and len(subscribe) > max_patterns:  # said before pydantic spends time on them
        raise FrameError(
            ErrorCode.INVALID_FRAME,
            f"hello: subscribe: {len(subscribe)} patterns; this syncar takes at most {max_patterns} (--max-patterns)",
        )
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
    wildcards = sum(pattern.wildcard for pattern in hello.subscribe or ())
    if wildcards > MAX_WILDCARD_PATTERNS:
        raise FrameError(
            ErrorCode.INVALID_FRAME,
            f"hello: subscribe: {wildcards} patterns with a wildcard inside a "
            f"name; at most {MAX_WILDCARD_PATTERNS} (exact names and a whole '*' are not limited so)",
        )
    return hello
