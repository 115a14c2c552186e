"""Broker backends, picked by the scheme of the `--backend` URI and the mode.

`BACKENDS` is the one place that says which class serves which scheme in which mode; each class declares its own
`features` (see `backends.base`). Only the chosen backend's module is imported, so `syncar run` on the local
backend never loads redis, aio-pika or nats-py. A new backend, or a new mode of one, is a row here.
"""

from __future__ import annotations

import importlib
import re
from urllib.parse import urlsplit

from backends.base import Backend, Mode
from sidecar.errors import ConfigError

_LOCAL = {Mode.BROADCAST: "backends.local:LocalBackend"}
_REDIS = {Mode.BROADCAST: "backends.redis:RedisBackend", Mode.DURABLE: "backends.redis:RedisStreamsBackend"}
_AMQP = {Mode.BROADCAST: "backends.amqp:AmqpBackend", Mode.DURABLE: "backends.amqp:AmqpDurableBackend"}
_NATS = {Mode.BROADCAST: "backends.nats:NatsBackend", Mode.DURABLE: "backends.nats:NatsJetStreamBackend"}
#: scheme -> mode -> "module:Class". A scheme without a mode has no such mode.
BACKENDS: dict[str, dict[Mode, str]] = {
    "local": _LOCAL,
    "redis": _REDIS,
    "rediss": _REDIS,
    "redis+sentinel": _REDIS,
    "rediss+sentinel": _REDIS,
    "redis+cluster": _REDIS,
    "rediss+cluster": _REDIS,
    "amqp": _AMQP,
    "amqps": _AMQP,
    "nats": _NATS,
    "tls": _NATS,
}

#: Schemes whose URI may list several host:port, comma-separated.
MULTI_HOST = frozenset(
    {"nats", "tls", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster", "amqp", "amqps"}
)
SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
ENCODE_HINT = "in the user name and password, write @ : / ? # [ ] % as %40 %3A %2F %3F %23 %5B %5D %25"


def scheme_of(uri: str) -> str:
    """The scheme of a broker URI that reads one way only.

    Raises:
        ConfigError: the scheme is unknown, or the URI is malformed. The message quotes nothing of the URI but a
            known scheme: the rest may hold a password.
    """
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower()
    if scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        if not sep:  # 127.0.0.1:6379, redis//host: not shown, it may hold a password
            raise ConfigError(f"backend: no scheme: the URI has no '://'; expected one of {known}")
        shown = f"{scheme}://" if SCHEME.fullmatch(scheme) else "(not shown)"
        raise ConfigError(f"backend: unknown URI scheme {shown}; expected one of {known}")
    try:
        parts = urlsplit(uri)
        if scheme not in MULTI_HOST:  # nats://a:4222,b:4222 is read by its backend, host by host
            _ = parts.port  # raises on a port that is not a number in range
    except ValueError:  # its text may quote the password
        raise ConfigError(
            f"backend: malformed {scheme}:// URI: check the port and the brackets around an IPv6 address; {ENCODE_HINT}"
        ) from None
    if "@" in rest[len(parts.netloc) :]:
        # The user name or password holds / ? or #: the URI would be read with part of the password as the host.
        raise ConfigError(f"backend: malformed {scheme}:// URI: an @ after the host; {ENCODE_HINT}")
    return scheme


def load_backend(uri: str, mode: Mode = Mode.BROADCAST) -> type[Backend]:
    """Import and return the backend class for `uri` in `mode`.

    Raises:
        ConfigError: the scheme is not one syncar knows, or the backend has no such mode.
    """
    modes = BACKENDS[scheme_of(uri)]
    if mode not in modes:
        raise ConfigError(f"mode: the {_import(modes[Mode.BROADCAST]).name} backend has no {mode} mode")
    return _import(modes[mode])


def _import(path: str) -> type[Backend]:
    module_name, _, class_name = path.partition(":")
    backend: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return backend
