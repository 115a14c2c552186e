"""Every use of redis-py's private state, in one place: broadcast mode's two connections, read as their bytes arrive
(`tests/backends/test_redis_internals.py` fails loudly if an upgrade removes what it relies on).

redis-py connects them (TLS, AUTH, through Sentinel the master, on a cluster the node); then their transports are
ours: each read is parsed with hiredis in the loop's I/O callback. On the subscribed connection (`Replies`) every
reply is handed to the backend there and then; on the publishing one (`Commands`) a batch's PUBLISHes are written to
the transport as they are and their replies resolve one future. Read through redis-py's `read_response()`, each
message cost a wake-up of the reader's Task through asyncio's StreamReader (a turn of the loop more) and its layers
of Python: a subscriber alone at 1,000 messages/s spent 45-56 µs of CPU per message so, 23-29 µs this way (the same
three alternated runs, docs/benchmarks.md).

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

#: What the backend does with one reply (error replies included, as redis-py's exceptions); an awaitable if a handler
#: has to wait: the next reply waits for it. A ConnectionError it raises ends the connection.
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


class _Transport(asyncio.Protocol):
    """A connected redis-py connection's transport, read here in place of its StreamReader: each read parsed with
    hiredis in the loop's I/O callback, each reply (an error reply as redis-py's exception) given to `_reply()`."""

    def __init__(self, conn: Connection) -> None:
        writer = conn._writer  # redis-py keeps its StreamWriter private; the transport under it is what we read
        if writer is None:
            raise redis_errors.ConnectionError("Connection closed by server.")
        self._transport: asyncio.Transport = writer.transport  # type: ignore[assignment]  # a stream's, so one
        self._previous = self._transport.get_protocol()
        self._parser = hiredis.Reader(protocolError=redis_errors.InvalidResponse, replyError=BaseParser.parse_error)
        self._loop = asyncio.get_running_loop()
        self.heard_at = self._loop.time()  # when the broker last sent something

    def attach(self) -> None:
        """Read the connection from now on; redis-py's reader hears nothing more, but of its end."""
        self._transport.set_protocol(self)

    def _reply(self, reply: Any) -> None:
        raise NotImplementedError

    def _fail(self, error: Exception) -> None:
        """End the connection because of `error`."""
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        self.heard_at = self._loop.time()
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                self._reply(reply)
        except (hiredis.ProtocolError, redis_errors.InvalidResponse) as exc:
            self._fail(redis_errors.ConnectionError(f"protocol error: {exc}"))

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


class Commands(_Transport):
    """The publishing connection: commands written straight to the transport, their replies awaited as one future.
    Through redis-py's `send_packed_command()` and `read_response()` (its StreamWriter's drain, its StreamReader's
    wake-up of the waiting Task, their layers of Python) `RedisBackend.publish()` at 100 a second cost a median 253 µs
    of CPU, this way 234; in the daemons the difference is within the noise (docs/benchmarks.md). One batch at a
    time: the caller's lock sees to it."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._waiting: asyncio.Future[list[Any]] | None = None
        self._replies: list[Any] = []
        self._expected = 0
        self._ended = False
        self.attach()

    @property
    def usable(self) -> bool:
        """False once the connection ended, is closing or fell out of step: connect again."""
        return not self._ended and not self._transport.is_closing()

    def send(self, writes: Sequence[bytes], replies: int) -> asyncio.Future[list[Any]]:
        """Write `writes`, in order, each as it is; the future has the `replies` replies to them (errors included)."""
        if not self.usable:
            raise redis_errors.ConnectionError("Connection closed by server.")
        self._waiting, self._expected, self._replies = self._loop.create_future(), replies, []
        for data in writes:
            self._transport.write(data)
        return self._waiting

    def _reply(self, reply: Any) -> None:
        waiting = self._waiting
        if waiting is None or waiting.done():  # nobody asked (a command given up on): the replies are out of step
            self._fail(redis_errors.ConnectionError("a reply nobody waited for"))
            return
        self._replies.append(reply)
        if len(self._replies) == self._expected:
            self._waiting = None
            waiting.set_result(self._replies)

    def _fail(self, error: Exception) -> None:
        self._ended = True
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_exception(error)
        self._waiting = None
        super()._fail(error)


class Replies(_Transport):
    """The subscribed connection: each reply handed to `on_reply` as it is read.

    Built before `attach()`, so that replies redis-py had already read can be given to `take()` first, in order.
    """

    def __init__(self, conn: Connection, on_reply: OnReply) -> None:
        super().__init__(conn)
        self._on_reply = on_reply
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._pending: deque[Any] = deque()  # replies that came while a handler was waiting
        self._busy: asyncio.Task[None] | None = None  # finishing a handler that waited, then the pending replies
        self._unstarted: Awaitable[None] | None = None  # what _busy has to finish, until it starts
        self._stopped = False

    @property
    def waiting_since(self) -> float | None:
        """Since when we have been waiting for the broker; None while a handler holds the reading up."""
        return None if self._busy is not None else self.heard_at

    def take(self, reply: Any) -> None:
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
            return self._on_reply(reply)
        except redis_errors.ConnectionError as exc:
            self._fail(exc)
            return None

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

    def _reply(self, reply: Any) -> None:
        self.take(reply)

    def _fail(self, error: Exception) -> None:
        if self._stopped and not self._lost.done():
            self._lost.cancel()
        elif not self._lost.done():
            self._lost.set_exception(error)
        super()._fail(error)
