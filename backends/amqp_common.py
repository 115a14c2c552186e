"""Shared by the RabbitMQ backend's modules: the amqp:// and amqps:// URI, its host list and its options, the errors
a lost connection raises, timeouts and small asyncio helpers."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from backends.amqp_topology import CLUSTER_QUEUE_TYPE, DEFAULT_QUEUE_TYPE, QUEUE_TYPES
from backends.base import BackendConfigError, describe_error, host_port, parse_hosts
from sidecar.backoff import DEFAULT_INITIAL

if TYPE_CHECKING:  # importing amqp_internals changes aiormq's frame receiver: only with the backend
    from backends.amqp_internals import Batch

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
DEFAULT_RECONNECT_INTERVAL = DEFAULT_INITIAL  # the first wait between attempts; then doubling up to the cap
DEFAULT_HEARTBEAT = 10  # seconds: a silently dead broker is noticed in ~33 s, not aiormq's default ~3 min
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # RabbitMQ refuses over 128 MiB by default
DEFAULT_PREFETCH = 256  # unacknowledged messages per consumer
CLOSE_TIMEOUT = 5.0

# What a lost connection or channel raises through aio-pika/aiormq: AMQPError, OSError (TimeoutError too),
# RuntimeError (ChannelInvalidStateError), ...
BROKER_ERRORS: tuple[type[BaseException], ...] = CONNECTION_EXCEPTIONS

# The URI query options aiormq/aio-pika read, and what each must be. aiormq ignores unknown options silently
# (aio-pika's own docstring spells the CA option `ca_certs`, which aiormq never reads), so start() refuses them.
URI_OPTIONS: dict[str, tuple[Callable[[str], bool], str]] = {
    "cafile": (lambda v: Path(v).is_file(), "an existing file"),
    "capath": (lambda v: Path(v).is_dir(), "an existing directory"),
    "cadata": (lambda v: re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", v) is not None, "base64 of DER certificates"),
    "certfile": (lambda v: Path(v).is_file(), "an existing file"),
    "keyfile": (lambda v: Path(v).is_file(), "an existing file"),
    "no_verify_ssl": (lambda v: v in {"0", "1"}, "0 or 1"),
    "heartbeat": (lambda v: v.isdigit() and int(v) < 65536, "whole seconds from 0 (off) to 65535"),
    "reconnect_interval": (lambda v: re.fullmatch(r"\d*\.?\d+", v) is not None and float(v) > 0, "seconds above 0"),
    "auth": (lambda v: v.lower() in {"plain", "external"}, "plain or external"),
    "name": (lambda v: True, "a connection name"),
    # syncar's own, not aiormq's: set it to the broker's max_message_size when that is below our default.
    "max_message_bytes": (lambda v: v.isdigit() and 1024 <= int(v) <= 512 * 1024 * 1024, "bytes, 1024 to 512 MiB"),
    # syncar's own too: the type of the durable queues (ignored in broadcast mode); quorum by default for a host list.
    "queue_type": (lambda v: v in QUEUE_TYPES, " or ".join(QUEUE_TYPES)),
}
TLS_OPTIONS = frozenset({"cafile", "capath", "cadata", "certfile", "keyfile", "no_verify_ssl"})


def check_options(url: URL) -> None:
    """Raise BackendError, naming the option, for a query option aiormq would ignore or choke on."""
    for key, value in url.query.items():
        if key not in URI_OPTIONS:
            raise BackendConfigError(f"amqp: unknown URI option {key!r}; known: {', '.join(URI_OPTIONS)}")
        if key in TLS_OPTIONS and url.scheme != "amqps":
            raise BackendConfigError(f"amqp: URI option {key!r} needs amqps://")
        valid, what = URI_OPTIONS[key]
        if not valid(value):
            raise BackendConfigError(f"amqp: URI option {key} must be {what}, not {value!r}")


@dataclass(frozen=True, slots=True)
class AmqpOptions:
    """An amqp:// or amqps:// URI, validated."""

    urls: tuple[URL, ...]  # what aio-pika connects to, one per host: syncar's defaults, without syncar's own options
    vhost: str
    secrets: tuple[str, ...]  # to scrub from every message we make: the password, as written and decoded
    max_message_bytes: int
    queue_type: str


def parse_uri(uri: str, instance_id: str) -> AmqpOptions:
    """The URI, one per host of its host list (`amqp://user:pass@h1:5672,h2:5673/vhost`), plus syncar's defaults
    for what it leaves out; BackendConfigError if it is unusable."""
    parts = urlsplit(uri)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise BackendConfigError("amqp: the URI names no host (amqp://user:password@host:port/vhost)")
    try:
        pairs = parse_hosts(hosts, DEFAULT_PORTS.get(parts.scheme.lower(), 5672))
        urls = [URL(urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host_port(*pair)}"))) for pair in pairs]
    except ValueError as exc:  # the message quotes the host list or the port, never the password
        raise BackendConfigError(f"amqp: invalid URI: {describe_error(exc)}") from exc
    url = urls[0]
    secrets = tuple(s for s in (url.password, url.raw_password) if s)
    check_options(url)
    defaults = {
        "heartbeat": str(DEFAULT_HEARTBEAT),
        "reconnect_interval": str(DEFAULT_RECONNECT_INTERVAL),
        "name": f"syncar {instance_id}",
    }
    added = {key: value for key, value in defaults.items() if key not in url.query}
    return AmqpOptions(
        urls=tuple(u.update_query(added).without_query_params("max_message_bytes", "queue_type") for u in urls),
        vhost=url.path[1:] or "/",
        secrets=secrets,
        max_message_bytes=int(url.query.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)),
        queue_type=url.query.get("queue_type", DEFAULT_QUEUE_TYPE if len(urls) == 1 else CLUSTER_QUEUE_TYPE),
    )


async def cancel_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Interrupted(ConnectionError):
    """A call aiormq failed with CancelledError: it awaited a connection aiormq closed (its heartbeat found it
    stuck)."""


@contextlib.contextmanager
def interruptions() -> Iterator[None]:
    """aiormq's CancelledError raised as Interrupted, one of BROKER_ERRORS: a lost call, not a cancelled caller (whose
    task would end as if cancelled: the outbox's, the fleet's, the restoring one). The caller's own cancellation (its
    task `cancelling()`, a timeout's included) goes on as it is."""
    try:
        yield
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise Interrupted("the connection was closed under the call") from exc


async def confirmed(batch: Batch, timeout: float) -> Exception | None:
    """What the broker's confirmation of `batch` failed with once it came (None: confirmed), or what aiormq failed it
    with when the channel closed (any Exception, a bare one when it knows no cause). Raises TimeoutError once none of
    its messages has been confirmed for `timeout` seconds, and a CancelledError as it came (`interruptions()` tells
    aiormq's, on a connection it closed, from the publisher's own cancellation).

    A broker that confirms slowly (a large batch on a busy machine) is waited for; one that stopped confirming (an
    alarm blocking publishers, a quorum queue without a leader) is not. The confirmation is awaited as it is, not
    through asyncio.wait(): the broker's confirm wakes the publisher at once, not a callback that wakes it a turn of
    the loop later; and one timer per batch, not a timeout's per wait.
    """
    confirmation = batch.confirmation
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle

    def check(left: int) -> None:
        nonlocal timer
        if confirmation.done():
            return
        if batch.left < left:  # some were confirmed meanwhile
            timer = loop.call_later(timeout, check, batch.left)
        else:
            confirmation.set_exception(TimeoutError())

    timer = loop.call_later(timeout, check, batch.left)
    try:
        await confirmation
    except TimeoutError:
        raise
    except Exception as exc:
        return exc
    finally:
        timer.cancel()
    return None


async def discard(closable: AbstractRobustConnection | AbstractRobustChannel) -> None:
    """Close, best effort and bounded."""
    with contextlib.suppress(*BROKER_ERRORS):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await closable.close()
