"""Broker backends, picked by the scheme of the `--backend` URI.

Only the chosen backend's module is imported, so `syncar run` on the local
backend never loads redis, aio-pika or nats-py.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from backends.base import Backend, Feature, Mode
from sidecar.errors import ConfigError

BACKENDS: dict[str, str] = {
    "local": "backends.local:LocalBackend",
    "redis": "backends.redis:RedisBackend",
    "rediss": "backends.redis:RedisBackend",
    "amqp": "backends.amqp:AmqpBackend",
    "amqps": "backends.amqp:AmqpBackend",
    "nats": "backends.nats:NatsBackend",
    "tls": "backends.nats:NatsBackend",
}


def scheme_of(uri: str) -> str:
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        # Only the scheme: the rest of the URI may hold a password.
        raise ConfigError(f"backend: unknown URI scheme {scheme + '://' if scheme else '(none)'}; "
                          f"expected one of {known}")
    return scheme


def load_backend(uri: str, mode: Mode = Mode.BROADCAST) -> type[Backend]:
    """Import and return the backend class for `uri`.

    Raises:
        ConfigError: the scheme is not one syncar knows, or the backend has no such mode.
    """
    module_name, _, class_name = BACKENDS[scheme_of(uri)].partition(":")
    backend: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    if mode is Mode.DURABLE and Feature.DURABLE not in backend.features:
        raise ConfigError(f"mode: the {backend.name} backend has no durable mode")
    return backend
