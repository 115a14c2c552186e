"""Every use of redis-py's private state, in one place: broadcast mode's connection, read as its bytes arrive
(`tests/backends/test_redis_internals.py` fails loudly if an upgrade removes what it relies on).

redis-py connects it (TLS, AUTH, HELLO 3, through Sentinel the master, on a cluster the node); then its transport is
ours (`Session`): each read is parsed with hiredis in the loop's I/O callback, every message handed to the backend
there and then, and a batch's PUBLISHes written to the transport as they are, their replies one future. Read through
redis-py's `read_response()`, each message cost a wake-up of the reader's Task through asyncio's StreamReader (a
turn of the loop more) and its layers of Python: a subscriber alone at 1,000 messages/s spent 45-56 µs of CPU per
message so, 23-29 µs this way (the same three alternated runs, docs/benchmarks/history.md, "Redis at 100 and 1,000
events/s").

A handler is a coroutine function; `inline.run_now` runs it up to its first wait, which the relay's never reaches.
One that does wait is finished in a Task, with the reading paused meanwhile, so that messages are still handed over
one at a time and in order.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import hiredis
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser
from redis.asyncio.connection import Connection

from backends.base import Handler, Message
from backends.inline import run_now

log = logging.getLogger("backends.redis")

#: What the backend does with one push or reply that is not a PUBLISH's (error replies included, as redis-py's
#: exceptions); an awaitable if a handler has to wait: the next reply waits for it. A ConnectionError it raises ends
#: the connection.
OnReply = Callable[[Any], Awaitable[None] | None]


class Receiver(Protocol):
    """A subscription, as `hand_over` sees it."""

    active: bool
    handler: Handler


def hand_over(receivers: Sequence[Receiver], message: Message) -> Awaitable[None] | None:
    """Give `message` to each active receiver's handler in turn, at once; if one has to wait, what is left to await.
    A handler that raises is logged: there is no redelivery in broadcast mode."""
    for index, receiver in enumerate(receivers):
        if receiver.active:  # an earlier handler may have unsubscribed it
            try:
                rest = run_now(receiver.handler(message))
            except Exception as exc:
                _failed(exc)
                continue
            if rest is not None:
                return _hand_over_later(rest, receivers[index + 1 :], message)
    return None


async def _hand_over_later(rest: Awaitable[None], later: Sequence[Receiver], message: Message) -> None:
    try:
        await rest
    except Exception as exc:
        _failed(exc)
    for receiver in later:
        if receiver.active:
            try:
                await receiver.handler(message)
            except Exception as exc:
                _failed(exc)


def _failed(exc: Exception) -> None:
    log.error("redis: subscriber failed, message dropped for it: %s", exc)
    log.debug("redis: subscriber failure", exc_info=exc)


def _command(args: Sequence[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)


class _Awaited:
    """A command written on the session whose answer has not all come: `left` more pushes of kind `confirmations`
    (a SUBSCRIBE's or UNSUBSCRIBE's, one per channel; an error reply instead if it was refused) or `left` more
    replies (a PING's, handed to `on_reply`; a batch of PUBLISHes', collected in `replies` for `future`, their
    `channel` and `bodies` kept to know them when they come back)."""

    __slots__ = ("bodies", "channel", "confirmations", "future", "left", "replies")

    def __init__(
        self,
        left: int,
        confirmations: bytes | None = None,
        future: asyncio.Future[list[Any]] | None = None,
        channel: bytes = b"",
        bodies: Sequence[bytes] = (),
    ):
        self.left, self.confirmations, self.future = left, confirmations, future
        self.channel, self.bodies = channel, bodies
        self.replies: list[Any] = []


class _Echo:
    """Our own message coming back, read by comparing it with the body we sent rather than by hiredis: hiredis
    would grow its buffer to hold the whole message (to ~2 MiB for a 1 MiB batch) and copy it once more into the
    bytes it hands over, both alive at the publishing daemon's peak (1.8 MiB of it, docs/benchmarks/history.md, "Redis
    peak memory at full speed"). Its bytes
    are `head` (the push's header), `body` (what we published) and a CRLF; `got` of them matched so far."""

    __slots__ = ("body", "channel", "got", "head")

    def __init__(self, head: bytes, channel: bytes, body: bytes) -> None:
        self.head, self.channel, self.body, self.got = head, channel, body, 0

    def match(self, data: bytes) -> int:
        """How many bytes at the start of `data` are the rest of this message; -1 if they are not it."""
        view, at, got = memoryview(data), 0, self.got
        for part in (self.head, self.body, b"\r\n"):
            if got >= len(part):
                got -= len(part)
                continue
            size = min(len(part) - got, len(view) - at)
            if not part.startswith(view[at : at + size], got):
                return -1
            at, got = at + size, 0
        self.got += at
        return at

    @property
    def done(self) -> bool:
        return self.got == len(self.head) + len(self.body) + 2

    def read(self) -> bytes:
        """The bytes matched so far, for hiredis, once they turn out not to be our message."""
        return (self.head + self.body + b"\r\n")[: self.got]


#: Bodies from this size on come back compared with what was sent, not through hiredis (`_Echo`).
ECHO_COMPARED_BYTES = 64 * 1024


class Session(asyncio.Protocol):
    """Broadcast mode's one connection, in RESP3: subscribed, and publishing too (Redis 6 takes any command from a
    subscribed RESP3 client). Its transport is read here in place of redis-py's StreamReader, each read parsed with
    hiredis in the loop's I/O callback.

    A push (a message, a subscription's confirmation) is handed to `on_reply` as it is read; so are the replies to
    the PINGs and to a refused SUBSCRIBE; a PUBLISH's reply resolves its batch's future. Redis answers a client's
    commands in order, and a push is never an answer: the commands not yet answered, in a queue, say whose each
    reply is. Redis writes a message to its own publisher just before its PUBLISH's reply, in one write: one read,
    where a subscribed and a publishing connection made two, and on a quiet machine often two wake-ups (the
    publishing daemon woke 2.2 to 2.9 times per event at 100 events/s, docs/benchmarks/history.md, "Redis: one
    connection")."""

    def __init__(self, conn: Connection, on_reply: OnReply) -> None:
        writer = conn._writer  # redis-py keeps its StreamWriter private; the transport under it is what we read
        if writer is None:
            raise redis_errors.ConnectionError("Connection closed by server.")
        self._transport: asyncio.Transport = writer.transport  # type: ignore[assignment]  # a stream's, so one
        self._previous = self._transport.get_protocol()
        self._parser = hiredis.Reader(protocolError=redis_errors.InvalidResponse, replyError=BaseParser.parse_error)
        self._loop = asyncio.get_running_loop()
        self.heard_at = self._loop.time()  # when the broker last sent something
        self._on_reply = on_reply
        self._awaited: deque[_Awaited] = deque()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._pending: deque[Any] = deque()  # replies that came while a handler was waiting
        self._busy: asyncio.Task[None] | None = None  # finishing a handler that waited, then the pending replies
        self._unstarted: Awaitable[None] | None = None  # what _busy has to finish, until it starts
        self._stopped = False
        self._until: tuple[Callable[[], bool], asyncio.Future[None]] | None = None  # what until() waits for
        # Whether what was read so far ends with a whole reply, so the next read starts one: hiredis has just handed
        # a reply over with nothing left in its buffer (true before the first read: redis-py left nothing unread).
        self._between = True
        self._echo: _Echo | None = None  # our own message being read, compared with its body
        self._transport.set_protocol(self)  # redis-py's reader hears nothing more, but of its end

    @property
    def usable(self) -> bool:
        """False once the connection ended or is closing: the reader connects again."""
        return not self._lost.done() and not self._transport.is_closing()

    @property
    def waiting_since(self) -> float | None:
        """Since when we have been waiting for the broker; None while a handler holds the reading up."""
        return None if self._busy is not None else self.heard_at

    def command(self, *args: bytes) -> None:
        """Write a SUBSCRIBE, an UNSUBSCRIBE (its confirmations are pushes, one per channel) or a PING."""
        name = args[0].lower()
        confirmed = name in (b"subscribe", b"unsubscribe")
        self._awaited.append(_Awaited(len(args) - 1, name) if confirmed else _Awaited(1))
        self._transport.write(_command(args))

    def publish(self, writes: Sequence[bytes], channel: bytes, bodies: Sequence[bytes]) -> asyncio.Future[list[Any]]:
        """Write `writes` (the PUBLISHes of `bodies` on `channel`), in order, each as it is; the future has their
        replies (errors included). One given up on leaves its place in the queue: its replies are read and dropped
        when they come."""
        if not self.usable:
            raise redis_errors.ConnectionError("Connection closed by server.")
        future = self._loop.create_future()
        self._awaited.append(_Awaited(len(bodies), future=future, channel=channel, bodies=bodies))
        for data in writes:
            self._transport.write(data)
        return future

    def _route(self, reply: Any) -> Awaitable[None] | None:
        """One reply or push, in the order read; what is left to await if a handler has to wait."""
        head = self._awaited[0] if self._awaited else None
        if isinstance(reply, list):  # a push: none of the commands here has an array for its reply
            if head is not None and head.confirmations == reply[0]:
                self._answered(head)
            return self._on_reply(reply)
        if head is None:
            raise redis_errors.ConnectionError("a reply nobody waited for")
        if head.future is None:  # a PING's reply, or a SUBSCRIBE's refusal (its only answer)
            self._awaited.popleft()
            return self._on_reply(reply)
        head.replies.append(reply)
        self._answered(head)
        return None

    def _answered(self, head: _Awaited) -> None:
        head.left -= 1
        if not head.left:
            self._awaited.popleft()
            if head.future is not None and not head.future.done():
                head.future.set_result(head.replies)

    def data_received(self, data: bytes) -> None:
        self.heard_at = self._loop.time()
        echo = self._echo if self._echo is not None or not self._between else self._echo_starts(data)
        if echo is not None:
            data = self._echo_read(echo, data)
            if not data:
                return
        parser = self._parser
        parser.feed(data)
        between = False
        try:
            while (reply := parser.gets()) is not False:
                between = not parser.has_data()
                self._take(reply)
        except (hiredis.ProtocolError, redis_errors.InvalidResponse) as exc:
            self._fail(redis_errors.ConnectionError(f"protocol error: {exc}"))
        self._between = between

    def _echo_starts(self, data: bytes) -> _Echo | None:
        """Our own message, if `data`, the start of a reply, starts it: the one whose PUBLISH is answered next."""
        head = self._awaited[0] if self._awaited else None
        if head is None or head.future is None or len(head.replies) >= len(head.bodies):
            return None
        body = head.bodies[len(head.replies)]
        if len(body) < ECHO_COMPARED_BYTES or type(body) is not bytes:
            return None
        channel = head.channel
        header = b">3\r\n$7\r\nmessage\r\n$%d\r\n%b\r\n$%d\r\n" % (len(channel), channel, len(body))
        if not data.startswith(header):
            return None
        self._echo = _Echo(header, channel, body)
        return self._echo

    def _echo_read(self, echo: _Echo, data: bytes) -> bytes:
        """Read `data` as the rest of our own message; what follows it, or what it turned out to be, for hiredis."""
        matched = echo.match(data)
        if matched < 0:  # not ours after all: hiredis reads the stream as it came
            self._echo = None
            return echo.read() + data
        if not echo.done:
            return b""
        self._echo = None
        self._take([b"message", echo.channel, echo.body])
        self._between = True
        return data[matched:]

    def eof_received(self) -> bool:
        return False  # close: connection_lost() follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._previous.connection_lost(exc)  # redis-py's stream ends too: its writer and its close see it
        error = redis_errors.ConnectionError("Connection closed by server.")
        error.__cause__ = exc
        self._fail(error)

    def pause_writing(self) -> None:
        self._previous.pause_writing()  # a StreamReaderProtocol: its drain() waits for resume_writing()

    def resume_writing(self) -> None:
        self._previous.resume_writing()

    def _take(self, reply: Any) -> None:
        """Hand `reply` over now, or after the replies before it if a handler is still waiting."""
        if self._stopped:
            return
        if self._busy is not None:
            self._pending.append(reply)
            return
        rest = self._hand(reply)
        if rest is not None:
            self._transport.pause_reading()
            self._unstarted = rest
            self._busy = self._loop.create_task(self._catch_up(rest))

    async def _catch_up(self, rest: Awaitable[None]) -> None:
        self._unstarted = None
        try:
            await rest
            while self._pending and not self._stopped:
                if (more := self._hand(self._pending.popleft())) is not None:
                    await more
        finally:
            self._busy = None
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def _hand(self, reply: Any) -> Awaitable[None] | None:
        try:
            rest = self._route(reply)
        except redis_errors.ConnectionError as exc:
            self._fail(exc)
            return None
        if self._until is not None and not self._until[1].done() and self._until[0]():
            self._until[1].set_result(None)
        return rest

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until `done()` holds, asked after each reply is handed over (the task resumes in the turn that
        handed the last one over); if the connection ends first, raise why."""
        if self._lost.done():
            self._lost.result()
        if not done():
            self._until = done, self._loop.create_future()
            try:
                await self._until[1]
            finally:
                self._until = None

    async def lost(self) -> None:
        """Wait until the connection ends and what came before was handed over; raise why it ended."""
        try:
            await self._lost
        except redis_errors.ConnectionError:
            if self._busy is not None:
                await self._busy
            raise

    def stop(self) -> None:
        """Hand nothing more over; a handler still waiting is cancelled."""
        self._stopped = True
        if self._busy is not None:
            self._busy.cancel()
        if isinstance(self._unstarted, types.CoroutineType):
            # Cancelled before its first step, the Task never runs it: closed here, the handler's wait ends.
            self._unstarted.close()
        if not self._lost.done():
            self._lost.cancel()
        elif not self._lost.cancelled():
            self._lost.exception()  # retrieved: nobody is left to raise it

    def _fail(self, error: Exception) -> None:
        """End the connection because of `error`: what waits for a reply gets it."""
        if self._stopped and not self._lost.done():
            self._lost.cancel()
        elif not self._lost.done():
            self._lost.set_exception(error)
        if self._until is not None and not self._until[1].done():
            self._until[1].set_exception(error)
        while self._awaited:
            future = self._awaited.popleft().future
            if future is not None and not future.done():
                future.set_exception(error)
        self._transport.close()
