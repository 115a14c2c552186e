"""Shared by the NATS backend's modules: URI parsing, one-line failure reasons, small asyncio helpers."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Iterable
from typing import Any
from urllib.parse import ParseResult, parse_qsl, unquote, urlsplit

import nats.errors

from backends.base import BackendConfigError, describe_error

log = logging.getLogger(__name__)

TLS_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "tls_hostname")
CONNECTION_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


def parse_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """Split a `nats://` or `tls://` URI into the servers without credentials (for messages) and nats-py's options.

    Raises:
        BackendError: the URI is malformed, or names an unknown option or an unreadable file.
    """
    parts = urlsplit(uri)  # the scheme comes lowercased
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if parts.path not in ("", "/") or parts.fragment:
        raise BackendConfigError("nats: the URI takes no path; put options after '?'")
    servers = []
    for host in hosts.split(","):
        try:
            split = urlsplit(f"//{host}")
            name, port = split.hostname or "localhost", split.port or 4222
        except ValueError:
            raise BackendConfigError(f"nats: bad host:port {host!r} in the URI") from None
        servers.append(f"{parts.scheme}://[{name}]:{port}" if ":" in name else f"{parts.scheme}://{name}:{port}")
    name, colon, secret = (unquote(part) for part in userinfo.partition(":"))
    user, password, token = (name, secret, None) if colon else (None, None, name or None)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - {*TLS_OPTIONS, "replicas"})
    if unknown:
        raise BackendConfigError(f"nats: unknown URI option {unknown[0]!r}; known: {', '.join(TLS_OPTIONS)}, replicas")
    _replicas(options)
    tls = _tls_context(options) if parts.scheme == "tls" or any(options.get(o) for o in TLS_OPTIONS[:3]) else None
    return ",".join(s.split("://", 1)[1] for s in servers), {
        "servers": servers,
        "user": user,
        "password": password,
        "token": token,
        "tls": tls,
        "tls_hostname": options.get("tls_hostname") or None,
    }


def stream_replicas(uri: str) -> int:
    """The `replicas=N` of a URI (1 to 5, default 1): how many servers keep a copy of a JetStream stream we create."""
    return _replicas(dict(parse_qsl(urlsplit(uri).query, keep_blank_values=True)))


def _replicas(options: dict[str, str]) -> int:
    value = options.get("replicas", "1")
    if not value.isdigit() or not 1 <= int(value) <= 5:
        raise BackendConfigError(f"nats: URI option replicas must be a number from 1 to 5, not {value!r}")
    return int(value)


def netloc(url: ParseResult) -> str:
    """A server's host:port (the host in brackets if it is IPv6), without credentials."""
    host = url.hostname or "localhost"
    return f"[{host}]:{url.port or 4222}" if ":" in host else f"{host}:{url.port or 4222}"


def _tls_context(options: dict[str, str]) -> ssl.SSLContext:
    if options.get("tls_key") and not options.get("tls_cert"):
        raise BackendConfigError("nats: tls_key needs tls_cert")
    setting = "tls_ca"
    try:
        context = ssl.create_default_context(cafile=options.get("tls_ca") or None)
        if options.get("tls_cert"):
            setting = "tls_cert"
            context.load_cert_chain(options["tls_cert"], options.get("tls_key") or None)
    except (OSError, ssl.SSLError) as exc:
        reason = describe(exc).removeprefix("tls: ")
        raise BackendConfigError(f"nats: {setting}: cannot load {options.get(setting)!r}: {reason}") from None
    return context


def describe(exc: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """`describe_error`, less what nats-py wraps around a server's -ERR line: its "nats: " and the quotes."""
    text = describe_error(exc, secrets)
    if isinstance(exc, nats.errors.Error):
        text = text.removeprefix("nats: ").strip("'\" ").lower()  # 'Authorization Violation', 'Stale Connection'
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text.lower():
        return "authorization violation (wrong user, password or token?)"
    return text or type(exc).__name__.lower()


def retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a task's outcome as seen, so that asyncio does not report it as never retrieved."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.debug("nats: %s", describe(error))


async def settle(awaitable: Awaitable[Any]) -> None:
    """Await a nats-py operation in a task of its own and ignore how it ends: closing a client while it
    reconnects makes nats-py await a future it cancelled itself, and that CancelledError is not ours."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.wait({task})
    retrieve(task)
