"""One app connection: read frames, dispatch them, write to it without ever blocking the relay.

Frames sent to a client during one turn of the event loop (every event of
the broker messages read in one go, say) are written once, at the end of that
turn: one system call instead of one per event, and no delay beyond the turn.
Small frames are joined; one of `OWN_FRAME_BYTES` or more goes as it is (the
bytes the replay buffer and the other apps hold), not copied. The transport's
buffer is the client's send queue. A client that lets more than
`client_queue_bytes` pile up is told so with an `error` frame and disconnected
(the slow-client policy): it can reconnect and resume from its last `seq`
while the replay buffer still holds it.

An app that ends its input (shutdown(SHUT_WR), as `printf ... | nc -U` does)
while publishes of it wait for the broker with an ack asked for still gets
their answers, and nothing else: it leaves the relay at once, and the
connection closes once the last answer is sent, or its app closes its socket
too, or the daemon stops.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from backends.base import writes
from sidecar import protocol, tracecontext
from sidecar.acks import Barriers
from sidecar.admission import hung_up
from sidecar.errors import FrameError
from sidecar.framing import FrameDecoder, Oversized
from sidecar.hello import Resume, parse_hello
from sidecar.logging import RateLimitedLogger, printable
from sidecar.metrics import DropReason, Metrics
from sidecar.peers import PeerPolicy
from sidecar.protocol import ErrorCode, Publish
from sidecar.ratelimit import TokenBucket
from sidecar.relay import Relay
from sidecar.subscriptions import EventFilter

log = logging.getLogger(__name__)
frame_warnings = RateLimitedLogger(log, interval=10.0)

#: Seconds a closing connection gets to take its last bytes before it is cut.
CLOSE_GRACE = 2.0
#: Seconds between looks at whether an app that ended its input, and waits for its answers, has closed its socket too.
PEER_CHECK = 1.0
#: A frame at least this long is written as it is, not joined to its neighbours: the transport (uvloop's) then holds
#: the very bytes the replay buffer and the other apps' transports hold, where a joined copy cost its size again for
#: every app that had not read it yet (a subscriber behind by 4 MiB at full speed: +4 MiB). Joining shorter frames
#: costs less CPU than an iovec each; from ~400 bytes on, an iovec costs less than the copy.
OWN_FRAME_BYTES = 512


def _every_event(path: str, event: str) -> bool:
    return True


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed `sock` (POLLHUP), not only its writing (shutdown(SHUT_WR) is POLLRDHUP alone)."""
    poller = select.poll()
    poller.register(sock, 0)  # POLLHUP and POLLERR are reported without asking
    return bool(poller.poll(0))


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may do before it hurts the others."""

    max_frame_bytes: int
    queue_bytes: int
    rate: float  # publishes per second; 0 for no limit
    burst: int
    peers: PeerPolicy
    max_patterns: int  # in hello.subscribe


class Connection(asyncio.Protocol):
    """One app's connection: the relay's Subscriber for it."""

    def __init__(
        self,
        relay: Relay,
        limits: Limits,
        metrics: Metrics,
        *,
        on_close: Callable[[Connection], None],
        turn_away: bytes | None = None,
    ) -> None:
        self._relay = relay
        self._limits = limits
        self._metrics = metrics
        self._turn_away = turn_away  # a frame to close the connection with at once, instead of serving it
        self._decoder = FrameDecoder(limits.max_frame_bytes)
        self._queue_bytes = limits.queue_bytes
        self._bucket = TokenBucket(limits.rate, limits.burst) if limits.rate else None
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._unsent: list[bytes] = []  # frames sent during this turn of the loop, written at its end
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self.greeted = False
        self.client_id = secrets.token_hex(16)
        # What the client's event ids are scoped with, made from client_id once it is final (when greeted); it also
        # names the client in logs, where the client_id, a secret, never goes.
        self.id_scope = ""
        self.name = ""
        self.echo = False
        self.wants: Callable[[str, str], bool] = _every_event
        self._acks = Barriers(self)  # its publishes that asked for an ack, answered each or by barrier
        self.paused = False  # the transport holds more than a quarter of the queue: a replay waits
        self.closed = self._loop.create_future()
        self._cut: asyncio.TimerHandle | None = None  # the abort of a close() that has not drained
        self._peer_check: asyncio.TimerHandle | None = None  # set once its app ended its input, waiting for answers

    @property
    def max_frame_bytes(self) -> int:
        """The longest line this client may send (told in `welcome`)."""
        return self._limits.max_frame_bytes

    @property
    def queue_bytes(self) -> int:
        """Unsent bytes this client may have before it is disconnected as too slow."""
        return self._queue_bytes

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        # pause_writing() at a quarter of the queue: a resuming client's replay is written as it reads, well within
        # its bound (Relay._catch_up).
        self._transport.set_write_buffer_limits(high=self._queue_bytes // 4)
        reason = self._limits.peers.refusal(transport.get_extra_info("socket"))
        if reason is not None:
            self._metrics.disconnects.labels("forbidden").inc()
            frame_warnings.warning("forbidden", "refused a connection: %s", reason)
            self.close(protocol.error(ErrorCode.FORBIDDEN, reason))
        elif self._turn_away is not None:
            self._metrics.disconnects.labels("too_many_clients").inc()
            frame_warnings.warning("refused", "refused a connection: %s", self._turn_away.decode().strip())
            self.close(self._turn_away)

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        # The whole lines of this read, after the end of one begun in an earlier read: all publishes, as they are
        # at full speed, they are decoded in one call.
        start = data.find(b"\n") + 1 if decoder.buffered or decoder.partial else 0
        end = data.rfind(b"\n") + 1
        publishes = protocol.fast_publishes(data, start, end) if start < end <= start + decoder.max_bytes else None
        if publishes is None:
            self._frames(decoder.feed(data))
        else:
            if start:
                self._frames(decoder.feed(data[:start]))
            for publish in publishes:
                if self._closing:
                    return
                self._publish(publish)
            if end < len(data):
                self._frames(decoder.feed(data[end:]))
        self._relay.flush_counts()

    def _frames(self, lines: list[bytes]) -> None:
        for line in lines:
            if self._closing:
                return
            if type(line) is Oversized:
                self._reject_frame(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame is longer than {self._decoder.max_bytes} bytes; it was discarded",
                    line,
                )
                continue
            try:
                publish = protocol.fast_publish(line)
                if publish is not None:
                    self._publish(publish)
                else:
                    self._dispatch(protocol.decode(line))
            except FrameError as exc:
                self._reject_frame(exc.code, exc.message, line)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._relay.resume_replay(self)

    def eof_received(self) -> bool:
        if self._decoder.partial:
            self._reject_frame(
                ErrorCode.TRUNCATED_FRAME,
                "connection ended in the middle of a frame; it was discarded",
                self._decoder.pending_head,
            )
        # No frame can come any more: the unfinished line (up to max_frame_bytes) is not kept while answers wait.
        self._decoder = FrameDecoder(self._limits.max_frame_bytes)
        self._write_unsent()
        transport = self._transport
        if self._closing or transport is None or not self._acks.owing or _closed(transport.get_extra_info("socket")):
            return False  # close our side once the pending writes are out
        # A half-close: the app reads on, waiting for what it is owed, and for nothing else.
        self._relay.leave(self)
        self._acks.close_when_settled()
        self._peer_check = self._loop.call_later(PEER_CHECK, self._check_peer)
        return True

    def _check_peer(self) -> None:
        """Close a half-closed connection whose app has closed its socket since (`socat` does, 0.5 s after its end
        of input): the transport reads no more, so no read tells, and it would wait for the broker, holding a place
        of --max-clients, to write answers nobody reads."""
        transport = self._transport
        if self._closing or transport is None:
            return
        if _closed(transport.get_extra_info("socket")):
            self.close()
        else:
            self._peer_check = self._loop.call_later(PEER_CHECK, self._check_peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._cut is not None:
            # asyncio's own transports raise (AttributeError) when aborted once gone, in a callback of their loop.
            self._cut.cancel()
        if self._peer_check is not None:
            self._peer_check.cancel()
        self._relay.leave(self)
        self._on_close(self)
        if self.greeted:
            log.info("client gone: %s (%s)", printable(self.name) or "unnamed", self.id_scope)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- frames in -----------------------------------------------------------------------------

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "publish":
            self._publish(protocol.parse_publish(frame))
        elif kind == "hello":
            if self.greeted:
                raise FrameError(ErrorCode.INVALID_FRAME, "hello: only allowed as the first frame")
            hello = parse_hello(frame, self._limits.max_patterns)
            self.name = hello.client
            self.echo = hello.echo
            if hello.client_id:
                self.client_id = hello.client_id
            if hello.subscribe is not None:
                self.wants = EventFilter(hello.subscribe)
            self._acks.by_barrier = hello.barriers
            self._greet(hello.resume)
        elif kind == "barrier":
            barrier_id = protocol.parse_barrier(frame)
            self._greet(None)
            if not self._acks.by_barrier:
                raise FrameError(ErrorCode.INVALID_FRAME, 'barrier: only after a hello with "barriers": true')
            answer = self._acks.barrier(barrier_id)
            if answer is not None:
                self.send(answer)
        elif kind == "ping":
            self._greet(None)
            self.send(protocol.PONG)
        else:
            raise FrameError(
                ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind[:64]!r}; expected hello, publish, barrier or ping"
            )

    def _publish(self, publish: Publish) -> None:
        if not self.greeted:
            self._greet(None)
        if self._bucket is not None and not self._bucket.take():
            self._metrics.dropped.labels(DropReason.RATE_LIMITED).inc()
            self.send(
                protocol.publish_refused(
                    publish,
                    ErrorCode.RATE_LIMITED,
                    f"over {self._limits.rate:g} publishes/s (burst {self._limits.burst}); not relayed",
                )
            )
            return
        if publish.traceparent is not None or publish.tracestate is not None:
            problem = tracecontext.problem(publish.traceparent, publish.tracestate)
            if problem is not None:
                # Said without the publish's id, which would tell the app its event is refused: it goes, untraced.
                self._reject_frame(ErrorCode.INVALID_TRACE_CONTEXT, f"{problem}; the event was relayed without it")
                publish = protocol.without_trace(publish)
        self._relay.publish(self, publish, self._acks)

    def _greet(self, resume: Resume | None) -> None:
        if not self.greeted:
            self.id_scope = self._relay.scope_of(self.client_id)
            # False: refused (and closing)
            self.greeted = self._relay.join(self, resume, barriers=self._acks.by_barrier)
            if self.greeted:
                log.info("client connected: %s (%s)", printable(self.name) or "unnamed", self.id_scope)

    def peer_gone(self) -> bool:
        transport = self._transport  # once closing, its socket may be closed and its number another's
        return (
            self._closing or transport is None or transport.is_closing() or hung_up(transport.get_extra_info("socket"))
        )

    # -- frames out ----------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self._closing or self._transport is None:
            return
        if not self._unsent:
            self._loop.call_soon(self._write_unsent)
        self._unsent.append(frame)

    def _write_unsent(self) -> None:
        transport, frames = self._transport, self._unsent
        if self._closing or transport is None or not frames:
            return
        self._unsent = []
        # One writev under uvloop, with the frames as they are but runs of short ones.
        transport.writelines(writes(frames, OWN_FRAME_BYTES))
        if transport.get_write_buffer_size() > self._queue_bytes:
            self._metrics.disconnects.labels("slow_client").inc()
            frame_warnings.warning(
                "slow", "disconnecting a client that does not read (%d bytes unsent)", transport.get_write_buffer_size()
            )
            self.close(
                protocol.error(
                    ErrorCode.SLOW_CLIENT, f"you fell {self._queue_bytes} bytes behind; resume from your last seq"
                )
            )

    def _reject_frame(self, code: str, message: str, line: bytes = b"") -> None:
        """Answer an unusable frame (`line`, or the head of one too long) with an `error`, carrying its `id` if it had
        a readable one, so that a client waiting for that publish's ack hears of it."""
        self._metrics.frame_errors.labels(code).inc()
        frame_warnings.warning(code, "bad frame from client %s: %s", self.id_scope or "-", printable(message))
        event_id = protocol.readable_id(line)
        self.send(
            protocol.error(ErrorCode(code), message)
            if event_id is None
            else protocol.error(ErrorCode(code), message, id=event_id)
        )

    def close(self, last_frame: bytes | None = None) -> None:
        """Say `last_frame`, stop sending, and cut the connection if it has not drained within the grace."""
        transport = self._transport
        if self._closing or transport is None:
            return
        if self._unsent:
            transport.write(b"".join(self._unsent))
            self._unsent = []
        if last_frame is not None:
            transport.write(last_frame)
        # Leaving the relay waits for connection_lost: this may run inside the relay's fan-out loop.
        self._closing = True
        transport.close()
        self._cut = self._loop.call_later(CLOSE_GRACE, transport.abort)
