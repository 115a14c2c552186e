"""The interface every broker backend implements, and the errors they raise.

The relay core only ever talks to this interface. A backend moves opaque
message bodies on one topic (syncar's `--key`); what is inside is the codec's
business. Reconnecting is the backend's job: it reports each state change
through `on_state` and restores its subscriptions by itself.

Every backend keeps order and confirms: `publish()` returns once the broker accepted the messages (the client's
`ack` means that), and `subscribe()` delivers one publisher's messages in publish order (the relay's replay and
resume rely on it). These are the interface, not features: a backend that cannot keep them is not a backend.
What differs between backends, and between the modes of one broker, is declared as `Feature`s, per class: one
class per mode, chosen by `backends.load_backend()` from its table. Each feature is consulted: `DURABLE` by
`Backend.__init__`, which refuses a config of the other mode, `NO_ECHO` through `Backend.broker_echoes`, by
the codec that recognises our own messages, and `IN_ORDER` by the fleet, which has the peer table tell trailing
gaps where it is declared and marks the key where it is not (sidecar/fleet.py). A message
whose handler raised comes back only in durable mode, because that mode acknowledges a message after its handler
returned: that is part of `DURABLE`, not a feature of its own.

A subscription the broker dropped without closing the connection (a proxy that reconnected behind our back, an
exchange deleted and declared again) is not the backend's to see: the daemon's watchdog (sidecar/fleet.py) notices
the silence and makes it again through this interface alone, `unsubscribe()` then `subscribe()`. So `unsubscribe()`
must succeed on a subscription the broker no longer has.
"""

from __future__ import annotations

import os
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import ClassVar, Self, final
from urllib.parse import urlsplit

from backends.tls import NOT_TLS
from sidecar.backoff import DEFAULT_CAP
from sidecar.errors import ConfigError, SidecarError


class Feature(StrEnum):
    """A capability a backend class declares; the core checks, it never guesses."""

    #: Messages published while an instance is away wait for it; each is acknowledged after its handler returned,
    #: so a handler that raises (or a crash) gets it again.
    DURABLE = "durable"
    #: With `BackendConfig.echo` False, what we published ourselves never reaches the core: the broker does not send
    #: it (NATS's no_echo) or the backend skips it unread (RabbitMQ, which has no no-local).
    NO_ECHO = "no_echo"
    #: What an instance publishes, on any of its topics, reaches each other instance in the order it was published:
    #: one connection each way (Redis, NATS, the local bus). Not RabbitMQ, which gives each topic a queue of its own.
    #: An announcement cannot overtake the batches before it, so the peer table may tell the lag it shows as a gap.
    #: Where it is absent, the fleet marks the key instead (sidecar/fleet.py): in broadcast mode with the syncar
    #: codec, a daemon that has published puts an empty batch numbered from its next seq on the key before each
    #: announcement, and a receiver tells what it reveals missing as any batch's gap.
    IN_ORDER = "in_order"


class BackendState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class BackendError(SidecarError):
    """Base of the errors a backend raises; no broker library exception escapes `backends/`."""


class BackendConfigError(BackendError, ConfigError):
    """The URI or one of its options is wrong: a configuration error (exit 2), not an outage."""


class BackendUnavailable(BackendError):
    """The broker cannot be reached now; the outbox keeps the message and retries."""

    retriable = True


class PublishUnconfirmed(BackendUnavailable):
    """The connection was lost after the message was sent and before the broker confirmed it: the broker may have
    it, or not. Sent again, it may reach the receivers twice."""


class BackendRefused(BackendError):
    """The broker answered and refused us: credentials, a TLS certificate, permissions on a vhost.

    Not retriable: trying again cannot help until someone changes the settings, so a daemon stops its start on it
    (exit 3) instead of starting without the broker as it does on a `BackendUnavailable`.
    """


def describe_error(exc: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """One lowercase line about a failure, for logs and error messages; each of `secrets` is masked as ***.

    A broker library wraps the socket's error: a TLS failure, a timeout or an OS error, in `exc` or the error it
    was raised from, is told as itself ("tls: certificate verify failed: ...", "timed out", "connection refused").
    """
    cause = exc.__cause__ or exc.__context__
    tls = next((error for error in (exc, cause) if isinstance(error, ssl.SSLError)), None)
    os_error = exc if isinstance(exc, OSError) else cause if isinstance(cause, OSError) else None
    if isinstance(tls, ssl.SSLCertVerificationError):
        text = f"tls: certificate verify failed: {tls.verify_message or tls.reason}"
    elif tls is not None and tls.reason == NOT_TLS:
        text = "tls: wrong version number: the server did not answer in TLS (a plain port behind a TLS URI?)"
    elif tls is not None:
        text = f"tls: {(tls.reason or str(tls)).replace('_', ' ').lower()}"
    elif isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        text = "timed out"
    elif os_error is not None and os_error.errno:
        # Not the text: asyncio's says "Connect call failed ('127.0.0.1', 6379)". A resolver's errno is negative.
        text = os.strerror(os_error.errno) if os_error.errno > 0 else os_error.strerror or str(os_error)
    else:
        text = str(exc)
    text = " ".join(text.split()).rstrip(".")
    if not text:
        return type(exc).__name__
    if text[1:2].islower():  # "Connection refused", but not "AUTH failed" or "ACCESS_REFUSED"
        text = text[:1].lower() + text[1:]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def parse_hosts(hosts: str, default_port: int) -> list[tuple[str, int]]:
    """A URI's comma-separated host list (`host`, `host:port` or `[v6]:port` each) as (host, port) pairs.

    Raises:
        ValueError: an empty host, or a port that is not one (the message names it; the caller adds its scheme).
    """
    pairs = []
    for text in hosts.split(","):
        parts = urlsplit(f"//{text}")
        if not parts.hostname:
            raise ValueError(f"an empty host in the host list {hosts!r}")
        pairs.append((parts.hostname, parts.port or default_port))  # .port raises ValueError for a bad one
    return pairs


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class BackendBackpressure(BackendError):
    """The broker or the backend's buffer is full; retry later."""

    retriable = True


class BackendClosed(BackendError):
    """The backend was closed; nothing more can be published."""


class FeatureNotSupported(BackendError):
    """A feature was asked of a backend that does not declare it."""


class MessageTooLarge(BackendError):
    """A message is larger than the broker accepts."""


class PublishTimeout(BackendError, TimeoutError):
    """The broker did not accept a message in time."""

    retriable = True


@dataclass(slots=True)
class Message:
    """One message from the broker.

    `position` is the broker's position of the message (a stream id, a
    sequence number) where the backend has one, for logs and de-duplication.
    `accepted_at` is when the broker stored it, in seconds since the epoch by
    the broker's own clock, where the broker says so in a way no publisher
    can choose (a Redis stream entry id, a JetStream message's timestamp):
    signed messages are judged fresh against it rather than against now.
    """

    body: bytes
    position: str | None = None
    accepted_at: float | None = None


Handler = Callable[[Message], Awaitable[None]]
StateCallback = Callable[[BackendState], None]


class Mode(StrEnum):
    BROADCAST = "broadcast"
    DURABLE = "durable"


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """What the core tells every backend; broker-specific options live in the URI.

    In `DURABLE` mode (only for backends with `Feature.DURABLE`): publish() returns once the broker has stored
    the message persistently; subscribe() reads this instance's own durable queue or consumer, named after
    `instance_id`, from where it left off, even across restarts of the daemon; each message is acknowledged to
    the broker only after the handler returned, so a crash means redelivery, never loss (the relay
    de-duplicates). The broker keeps at most `retention` messages per topic, and forgets an instance that has
    been away for `instance_ttl` seconds.

    With `echo` False the core says it has no use for its own messages coming back; a backend that can keep them
    from the core (the broker not sending them, or skipping them before they are decoded) does, and then declares
    `Feature.NO_ECHO`.
    """

    uri: str
    instance_id: str
    connect_timeout: float = 5.0
    mode: Mode = Mode.BROADCAST
    retention: int = 1_000_000
    instance_ttl: float = 86_400.0
    echo: bool = True
    #: The longest wait between two reconnect attempts (`--reconnect-max-delay`); the first come within 0.1 s.
    reconnect_max_delay: float = DEFAULT_CAP
    #: The topic the daemon publishes and subscribes (`--key`), known before the first connect: a Redis cluster's
    #: durable mode connects to the node that holds its streams.
    key: str | None = None


class Subscription(ABC):
    @abstractmethod
    async def unsubscribe(self) -> None:
        """Stop delivery; calling it again does nothing."""


#: A message body at least this long goes to the broker's socket in a write of its own, as it is. Joined with the
#: protocol bytes around it, as the client libraries do, a batch was copied once or twice more (nats-py's PUB
#: command and its transport's join; redis-py's hiredis packing and its join): at 4 KiB payloads, in batches of up
#: to 1 MiB, a fifth to a third of the publishing daemon's CPU. Shorter ones are joined: a write costs a system
#: call, more than copying a few KiB.
OWN_WRITE_BYTES = 64 * 1024


#: A piece at least this long goes uncopied in a vectored write (`writelines`: one writev under uvloop, which the
#: daemon runs on; asyncio's own loop joins the pieces): joining it to
#: its neighbours cost more than an iovec. A 17 KB frame (4 KiB payload) cost 3.2-4.6 us of the writer's CPU
#: joined, 2.3-2.5 us as it is; at 4 KB 1.0-1.6 against 0.5; at 1.3 KB joining is level (0.20 against 0.22).
OWN_IOVEC_BYTES = 4096


def writes(pieces: Iterable[bytes], alone: int = OWN_WRITE_BYTES) -> list[bytes]:
    """`pieces` as the writes that carry them, in order: runs of short ones joined, one of `alone` bytes or more
    (OWN_WRITE_BYTES for writes of their own, OWN_IOVEC_BYTES for a `writelines`) by itself and uncopied."""
    out: list[bytes] = []
    run: list[bytes] = []
    for piece in pieces:
        if len(piece) < alone:
            run.append(piece)
            continue
        if run:
            out.append(b"".join(run))
            run = []
        out.append(piece)
    if run:
        out.append(b"".join(run))
    return out


class Backend(ABC):
    """One broker connection, shared by every publish and subscription of a daemon."""

    name: ClassVar[str]
    features: ClassVar[frozenset[Feature]]
    #: The largest message body publish() accepts; the outbox sizes its batches by it.
    max_message_bytes: int = 8 * 1024 * 1024

    def __init__(self, config: BackendConfig, *, on_state: StateCallback | None = None) -> None:
        if (config.mode is Mode.DURABLE) != (Feature.DURABLE in self.features):
            raise BackendConfigError(
                f"{self.name}: {type(self).__name__} has no {config.mode} mode; "
                "backends.load_backend(uri, mode) picks the class for a mode"
            )
        self.config = config
        self._on_state = on_state
        self.state = BackendState.CONNECTING
        #: The instance ids of the other daemons on the key, as the fleet last heard them (sidecar/fleet.py); the
        #: daemon sets it. RabbitMQ's durable mode binds their queues again after a reconnect; others ignore it.
        self.peer_instances: Callable[[], Iterable[str]] = tuple

    def _check_sizes(self, bodies: Sequence[bytes], limit: int | None = None, what: str = "the limit") -> None:
        """Refuse the whole batch, before any of it is sent, if one body is over `limit` (`max_message_bytes`)."""
        limit = self.max_message_bytes if limit is None else limit
        if (largest := max(map(len, bodies), default=0)) > limit:
            raise MessageTooLarge(f"{self.name}: message of {largest} bytes is over {what} of {limit} bytes")

    def _set_state(self, state: BackendState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state)

    @final
    def supports(self, feature: Feature) -> bool:
        """Whether the class declares `feature`; a class is one broker in one mode, so this never varies."""
        return feature in self.features

    @property
    def broker_echoes(self) -> bool:
        """Whether the broker brings back what we published ourselves, for the codec to recognise and drop."""
        return self.config.echo or Feature.NO_ECHO not in self.features

    @property
    def node(self) -> str | None:
        """The broker node this backend is connected to now (`host:port`), None while it is not connected or
        cannot tell. The relay puts it in `status` frames and `/metrics`; a reconnect that lands on another node
        than the last one is a failover (`syncar_broker_failovers_total`)."""
        return None

    @property
    def members(self) -> tuple[str, ...]:
        """The cluster's nodes as the broker announced them (`host:port` each), empty where it does not tell;
        `syncar check` prints them."""
        return ()

    @abstractmethod
    async def start(self) -> None:
        """Connect for the first time.

        Raises:
            BackendUnavailable: the broker could not be reached (refused, timed out, name not resolved): worth
                trying again later, by calling start() again.
            BackendRefused: the broker refused us (credentials, TLS, permissions).
        """

    @abstractmethod
    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        """Send messages in order; return once the broker accepted all of them.

        Raises:
            BackendUnavailable: not connected now; nothing of `bodies` may be assumed sent.
            MessageTooLarge: one body is over `max_message_bytes`.
            BackendClosed: after close().
        """

    @abstractmethod
    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        """Deliver every message on `topic` to `handler`, one at a time, in order.

        Returns only once the broker has registered the interest, so a publish
        made afterwards is delivered. Survives reconnects.
        """

    @abstractmethod
    async def close(self) -> None:
        """Disconnect; calling it again does nothing."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
