"""The error hierarchy shared by the daemon and the backends."""

from __future__ import annotations

from typing import ClassVar


class SidecarError(Exception):
    """Base of every error syncar raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(SidecarError):
    """A setting is missing or invalid; the message names it."""


class StartupError(SidecarError):
    """The daemon cannot start (socket in use, broker unreachable...)."""


class FrameError(SidecarError):
    """A frame from a client is unusable; the client gets an `error` frame and stays connected."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CodecError(SidecarError):
    """A message from the broker could not be decoded; it is counted and dropped."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
