"""What every `syncar` command shares: its settings as flags and back (`add_settings`, `load_settings`), the exit
codes, and the event loop it runs on (`run_async`)."""

from __future__ import annotations

import argparse
import asyncio
import enum
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pydantic import ValidationError

from sidecar.config import MiB, Settings, env_of, flag_of, line_in_config, redact_uri
from sidecar.errors import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3
EXIT_QUEUED = 4  # publish: syncar holds the event, the broker has not acknowledged it (yet)


def _choices(annotation: Any) -> list[str]:
    """The values an enumerated setting takes (a Literal or an Enum, maybe `| None`); empty for the others."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return [str(arg) for arg in args]
    return _choices(args[0]) if len(args) == 1 else []


def _shown(name: str, value: Any) -> str:
    """A default as a person writes it on the command line: 0660, 86400, 1048576 (1 MiB); nothing for none."""
    if value is None or value == ():
        return ""
    if name == "socket_mode":
        return f"{value:04o}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and name.endswith("_bytes") and value >= MiB and value % MiB == 0:
        return f"{value} ({value // MiB} MiB)"
    return str(value)


def add_settings(parser: argparse.ArgumentParser, fields: Sequence[str] | None = None) -> None:
    """The settings (`fields`, or all of them) as the command's flags, in a group of their own."""
    group = parser.add_argument_group("settings")
    for name, field in Settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        choices = _choices(field.annotation)
        metavar = "{" + ",".join(choices) + "}" if choices else name.split("_")[-1].upper()
        # A computed default (the socket, the instance id) is shown as it comes out on this machine, for this user.
        default = _shown(name, field.get_default(call_default_factory=True, validated_data={}))
        here = " here" if field.default_factory is not None else ""
        shown = f"; default{here} {default}" if default else ""
        # A yes/no setting is a switch: --require-broker, or --no-require-broker over the environment.
        how: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if field.annotation is bool else {"metavar": metavar}
        )
        group.add_argument(
            flag_of(name),
            dest=name,
            default=argparse.SUPPRESS,
            **how,
            help=f"{field.description}{shown} [{env_of(name)}]",
        )


def load_settings(args: argparse.Namespace) -> Settings:
    """Build Settings from the flags given (the rest come from env and file).

    Raises:
        ConfigError: a value is invalid; the message names the setting.
    """
    given = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["loc"]:
            name = str(first["loc"][0])
        else:  # a check across settings: its message starts with the setting it is about
            name, _, message = message.partition(": ")
        if first["type"] == "extra_forbidden":
            message = "no such setting; the keys are the flags' names with underscores, e.g. max_frame_bytes"
        located = line_in_config(name, given)
        if located is not None:
            where = f"{name} in {located[0]}, line {located[1]}"
        else:
            where = f"{flag_of(name)} / {env_of(name)}" if name in Settings.model_fields else name
        got = first.get("input")
        if name in ("backend", "backend_file") and isinstance(got, str):
            got = redact_uri(got)
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        raise ConfigError(f"invalid setting {where}: {message}{shown}") from None
    except (OSError, ValueError) as exc:  # an unreadable or malformed --config file
        raise ConfigError(f"invalid setting --config: {exc}") from None


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere it builds
        return asyncio.run(main())
    return uvloop.run(main())
