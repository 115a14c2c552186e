"""An asyncio client for syncar's socket: publish, receive, and survive daemon restarts.

    async with Client(name="worker-1") as client:  # the socket `syncar run` uses by default
        await client.publish("messages", "created", {"text": "hi"}, ack=True)
        async for event in client:
            print(event.path, event.event, event.data)

The client reconnects with jittered exponential back-off, resumes from the
last `seq` it saw, and keeps publishes made while disconnected (up to
`max_pending`) to send them after reconnecting. Publishes that asked for an
ack are re-sent after a reconnect until the daemon acknowledges them, for at
most their `timeout`: `publish(ack=True)` always returns or raises within it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson

from sidecar import PROTOCOL_VERSION, client_types
from sidecar.backoff import Backoff
from sidecar.client_events import ReceivedEvents
from sidecar.client_publishes import HeldPublishes, publish_line, too_large
from sidecar.client_types import (
    AckTimeout,
    ClientError,
    Event,
    Gap,
    PendingFull,
    PublishRefused,
    Refused,
    ResumeGap,
)
from sidecar.paths import default_socket_path

__all__ = [
    "AckTimeout",
    "Client",
    "ClientError",
    "Event",
    "Gap",
    "PendingFull",
    "PublishRefused",
    "Refused",
    "ResumeGap",
]

log = logging.getLogger(__name__)

#: The longest frame accepted; also what the reader buffers (twice this) before it stops reading when the app
#: does not consume events, so that the daemon sees a slow client instead of this process growing.
STREAM_LIMIT = 16 * 1024 * 1024
#: Seconds `publish(ack=True)` waits for the broker to accept an event. Longer than a broker reconnect or a daemon
#: restart usually takes, shorter than an HTTP request's patience.
DEFAULT_ACK_TIMEOUT = 30.0


_Gap = TypeVar("_Gap", Gap, ResumeGap)


class Client:
    def __init__(
        self,
        socket: str | Path | None = None,
        *,
        name: str = "python",
        subscribe: Sequence[Mapping[str, str] | str] | None = None,
        echo: bool = False,
        dedup: bool = True,
        reconnect: bool = True,
        max_pending: int = 10_000,
        max_events: int = 10_000,
        backoff: tuple[float, float] = (0.05, 5.0),
        on_gap: Callable[[Gap], None] | None = None,
        on_resume_gap: Callable[[ResumeGap], None] | None = None,
        client_id: str | None = None,
    ) -> None:
        """Args:
            client_id: this app's identity across connections, and a secret (docs/protocol.md, `hello`): the ids
                its events are named with are scoped by it, so an event published again with the same id and the
                same `client_id`, by this process or another, is one event to the receivers, and whoever knows it
                can publish in this app's name. A string of 1 to 256 characters, as the daemon takes it (default:
                128 random bits, a new app).

        Raises:
            ValueError: `client_id` is not a string of 1 to 256 characters.
        """
        # Where `syncar run` listens unless told otherwise: $SYNCAR_SOCKET, else its default path.
        self.socket = Path(socket or os.environ.get("SYNCAR_SOCKET") or default_socket_path())
        self.name = name
        self.subscribe = None if subscribe is None else list(subscribe)
        self.echo = echo
        self.reconnect = reconnect
        self.max_pending = max_pending
        self.backoff = backoff
        # A secret: it scopes the ids of our events (docs/protocol.md). os.urandom is what secrets.token_hex draws
        # from; the secrets module would add hmac and hashlib to this module's import.
        self.client_id = os.urandom(16).hex() if client_id is None else client_types.checked_client_id(client_id)
        self.instance: str | None = None
        self.broker_up = False
        self.gaps = 0  # resumes that could not be served: events were missed
        # Events the daemon said this client will never get: the `missed` of each gap on the bus and of each
        # resume gap it could count.
        self.missed = 0
        # Called with each Gap and each ResumeGap; what they raise is logged, never raised here.
        self.on_gap = on_gap
        self.on_resume_gap = on_resume_gap
        self._epoch: str | None = None
        self._seq = 0
        self._writer: asyncio.StreamWriter | None = None
        self._held = HeldPublishes()
        self._events = ReceivedEvents(max_events, dedup=dedup)
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._first_connect: asyncio.Future[None] | None = None
        self.max_frame_bytes: int | None = None  # told by the daemon's welcome

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect and wait for the daemon's welcome. Once connected, the client reconnects by itself (if `reconnect`).

        Raises:
            Refused: the daemon refused this client (`client_id_in_use`: another connection has its `client_id`).
            ClientError: nothing listens on the socket (at once), or the daemon did not answer within `timeout`.
        """
        loop = asyncio.get_running_loop()
        self._first_connect = loop.create_future()
        self._task = asyncio.create_task(self._run(), name="syncar-client")
        try:
            async with asyncio.timeout(timeout):
                await self._first_connect
        except TimeoutError:
            await self.close()
            raise ClientError(f"no syncar answered on {self.socket} within {timeout}s") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._end(ClientError("client closed before the publish was acknowledged"))

    def _end(self, error: ClientError) -> None:
        """No ack can come any more: fail what waits for one, drop what was never sent, end the event iteration."""
        self._held.fail(error)
        self._events.end()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self,
        path: str,
        event: str,
        data: Any = None,
        context: Any = None,
        *,
        id: str | None = None,
        ack: bool = False,
        timeout: float | None = DEFAULT_ACK_TIMEOUT,
        traceparent: str | None = None,
        tracestate: str | None = None,
        bin: bytes | None = None,
    ) -> None:
        """Publish one event; with `ack=True`, return only once the broker accepted it.

        Args:
            timeout: with `ack=True`, seconds to wait for the ack (None: as long as it takes).
            bin: the whole event as a binary serializer made it (BSON, MessagePack), opaque to syncar, in place of
                `data` and `context`; receivers get it as `Event.bin`. `path` and `event` still go in the clear,
                for subscriptions to filter on.
            traceparent, tracestate: W3C trace context the receivers get with the event (`Event.traceparent`). A
                malformed one is not relayed: the daemon sends the event without it and says so (logged here).

        Raises:
            PublishRefused: too large for the daemon (always), or refused by the daemon (`ack=True` only).
            AckTimeout: no ack within `timeout` (`ack=True` only).
            PendingFull: disconnected and the pending buffer is full.
            ClientError: the connection is gone and `reconnect` is off, or the client was closed.
        """
        event_id = id or os.urandom(12).hex()
        line = publish_line(
            event_id, path, event, data, context, ack=ack, traceparent=traceparent, tracestate=tracestate, bin=bin
        )
        if (problem := too_large(line, self.max_frame_bytes)) is not None:
            raise problem
        if self._task is None or self._task.done():
            raise ClientError(
                "not connected to syncar: connect() first (or it was closed, or the connection was lost "
                "with reconnect off)"
            )
        future = asyncio.get_running_loop().create_future() if ack else None
        try:
            # With an ack to wait for, the timeout covers a daemon that stopped reading, too.
            async with asyncio.timeout(timeout if ack else None):
                await self._send(event_id, line, future)
                if future is not None:
                    await future
        except TimeoutError:
            assert future is not None
            if future.done() and not future.cancelled():  # settled just as the timeout fired
                future.result()
                return
            self._held.forget(event_id)
            queued = self.connected
            if queued:
                where = f"syncar has it in its outbox; its broker {'is up' if self.broker_up else 'is down'}"
            else:
                where = f"not connected to syncar at {self.socket}; the client no longer holds it"
            raise AckTimeout(f"publish {event_id}: no ack within {timeout:g}s: {where}", queued=queued) from None

    async def _send(self, event_id: str, line: bytes, future: asyncio.Future[None] | None) -> None:
        """Write `line` now if connected, else hold it; keep it until acknowledged if `future` waits for that."""
        writer = self._writer
        if writer is not None and self.connected:
            if future is not None:
                self._held.hold(event_id, line, future)
            writer.write(line)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        else:
            if len(self._held) >= self.max_pending:
                raise PendingFull(f"disconnected from syncar and {self.max_pending} publishes are waiting")
            self._held.hold(event_id, line, future)

    # -- receiving -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return aiter(self._events)

    async def next_event(self, timeout: float | None = None) -> Event:
        return await self._events.next(timeout)

    # -- the connection ------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(*self.backoff)
        while True:
            error: ClientError | None = None  # why connect() fails, if it still waits
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket, limit=STREAM_LIMIT)
            except OSError as exc:
                error = ClientError(f"cannot connect to {self.socket}: {exc.strerror or exc}")
            else:
                try:
                    await self._session(reader, writer)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    log.debug("connection to syncar lost: %s", exc)
                except Refused as exc:
                    error = exc
                finally:
                    if self.connected:  # welcomed: a daemon that refuses every hello is retried ever slower
                        backoff.reset()
                    self._connected.clear()
                    self._writer = None
                    writer.close()
            first = self._first_connect
            if error is not None and first is not None and not first.done():
                first.set_exception(error)
                return
            if not self.reconnect:
                self._end(error or ClientError(f"connection to syncar at {self.socket} lost, and reconnect is off"))
                return
            await asyncio.sleep(backoff.next())

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self._hello())
        while line := await reader.readline():
            try:
                frame = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                # The daemon passes events' data through as JSON it has checked, and orjson reads less than all
                # JSON (a number beyond a double's range, say): skip such an event rather than fail on it at every
                # resume.
                log.warning("syncar: skipped a frame this client cannot read: %s", exc)
                continue
            kind = frame.get("type")
            if kind == "event":
                await self._event(frame)
            elif kind == "ack":
                self._held.settle(frame["id"], None)
            elif kind == "nack":
                if frame.get("code") == "stopping" and self.reconnect:
                    continue  # this daemon did not send it: held, for the next one (docs/protocol.md, ack and nack)
                self._held.settle(frame["id"], PublishRefused(frame.get("code", ""), frame.get("message", "")))
            elif kind == "welcome":
                await self._welcomed(frame, writer)
            elif kind == "status":
                self.broker_up = frame.get("broker") == "up"
            elif kind == "error":
                self._error(frame)
            elif kind == "gap":
                self._gap(frame)

    def _hello(self) -> bytes:
        """Who we are, what we want, and, after the first connection, where to resume from."""
        hello: dict[str, Any] = {
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "client": self.name,
            "client_id": self.client_id,
            "echo": self.echo,
        }
        if self.subscribe is not None:
            hello["subscribe"] = self.subscribe
        if self._epoch is not None:
            hello["resume"] = {"epoch": self._epoch, "seq": self._seq}
        return orjson.dumps(hello, option=orjson.OPT_APPEND_NEWLINE)

    async def _event(self, frame: dict[str, Any]) -> None:
        self._seq = frame["seq"]
        await self._events.put(frame)

    def _gap(self, frame: dict[str, Any]) -> None:
        gap = Gap.of(frame)
        self.missed += gap.missed
        _tell(self.on_gap, gap)  # with none, nothing: the daemon's log says it already

    def _resume_gap(self, frame: dict[str, Any]) -> None:
        gap = ResumeGap.of(frame)
        self.gaps += 1
        self.missed += gap.missed or 0
        log.warning("syncar: resume_gap: %s", _missed(gap))
        _tell(self.on_resume_gap, gap)

    def _error(self, frame: dict[str, Any]) -> None:
        code = frame.get("code")
        if code == "resume_gap":
            self._resume_gap(frame)
            return
        if isinstance(frame.get("id"), str) and frame["id"] in self._held:
            self._held.settle(frame["id"], PublishRefused(code or "", frame.get("message", "")))
            return
        log.warning("syncar: %s: %s", code, frame.get("message"))
        if code == "client_id_in_use":
            raise Refused(f"{code}: {frame.get('message')}")

    async def _welcomed(self, frame: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        if frame.get("epoch") != self._epoch:
            self._epoch = frame.get("epoch")
            self._seq = frame.get("seq", 0)
        self.instance = frame.get("instance")
        self.broker_up = frame.get("broker") == "up"
        self.max_frame_bytes = frame.get("max_frame_bytes")
        # Send in publish order what was never written, and what was written but not acknowledged. No await
        # until we are marked connected: a publish() in between would be queued behind and never written.
        for problem in self._held.resend(writer, self.max_frame_bytes):
            log.warning("syncar: %s", problem)
        self._writer = writer
        self._connected.set()
        if self._first_connect is not None and not self._first_connect.done():
            self._first_connect.set_result(None)
        await writer.drain()


def _tell(callback: Callable[[_Gap], None] | None, gap: _Gap) -> None:
    """Hand `gap` to the app's callback, if any; what it raises is logged, not raised in the client's reader."""
    if callback is not None:
        try:
            callback(gap)
        except Exception:
            log.exception("syncar: the %s callback raised", type(gap).__name__)


def _missed(gap: ResumeGap) -> str:
    """The warning of a resume gap: how many events will not come, where the daemon counted them."""
    if gap.missed is None:
        return f"events may have been missed, how many is not known: {gap.message}"
    return f"{gap.missed} events (the daemon's seqs {gap.first} to {gap.last}) will not come: {gap.message}"
