"""Every use of redis-py's private state, in one place: broadcast mode's subscribed connection, read as its bytes
arrive (`tests/backends/test_redis_internals.py` fails loudly if an upgrade removes what it relies on).

redis-py connects the connection (TLS, AUTH, through Sentinel the master, on a cluster the node) and writes on it;
once subscribed, `Replies` takes its transport over: each read is parsed with hiredis in the loop's I/O callback and
every reply handed to the backend there and then. Read through redis-py's `read_response()`, each message cost a
wake-up of the reader's Task through asyncio's StreamReader (a turn of the loop more) and its layers of Python: a
subscriber alone at 1,000 messages/s spent 54 µs of CPU per message so, 23-36 µs this way (docs/benchmarks.md).

A handler is a coroutine function; `run_now` runs it up to its first wait, which the relay's never reaches. One that
does wait is finished in a Task, with the reading paused meanwhile, so that messages are still handed over one at a
time and in order.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, Protocol

import hiredis
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser
from redis.asyncio.connection import Connection

from backends.base import Handler, Message

log = logging.getLogger("backends.redis")

#: What the backend does with one reply (error replies included, as redis-py's exceptions); an awaitable if a handler
#: has to wait: the next reply waits for it. A ConnectionError it raises ends the connection.
OnReply = Callable[[Any], Awaitable[None] | None]


def run_now(call: Awaitable[None]) -> Awaitable[None] | None:
    """Run the coroutine `call` until it first waits: None if it ended without waiting, else the rest of it, to
    await. An awaitable that is not a coroutine is returned as it is."""
    if not isinstance(call, types.CoroutineType):
        return call
    try:
        waited_on = call.send(None)
    except StopIteration:
        return None
    return _rest(call, waited_on)


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


@types.coroutine
def _rest(call: Coroutine[Any, Any, None], waited_on: Any) -> Generator[Any, None, None]:
    """What a Task does with `call`, which one send() has left waiting on `waited_on`: hand that to the Task
    awaiting us, and go on with `call` when it is done (or throw into it what is thrown into us: a cancellation)."""
    while True:
        try:
            yield waited_on
        except BaseException as exc:
            try:
                waited_on = call.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waited_on = call.send(None)
            except StopIteration:
                return


class Replies(asyncio.Protocol):
    """Reads a connected redis-py connection in place of its StreamReader, handing each reply to `on_reply`.

    Built before `attach()`, so that replies redis-py had already read can be given to `take()` first, in order.
    """

    def __init__(self, conn: Connection, on_reply: OnReply) -> None:
        writer = conn._writer  # redis-py keeps its StreamWriter private; the transport under it is what we read
        if writer is None:
            raise redis_errors.ConnectionError("Connection closed by server.")
        self._transport: asyncio.Transport = writer.transport  # type: ignore[assignment]  # a stream's, so one
        self._previous = self._transport.get_protocol()
        self._on_reply = on_reply
        self._parser = hiredis.Reader(protocolError=redis_errors.InvalidResponse, replyError=BaseParser.parse_error)
        self._loop = asyncio.get_running_loop()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._pending: deque[Any] = deque()  # replies that came while a handler was waiting
        self._busy: asyncio.Task[None] | None = None  # finishing a handler that waited, then the pending replies
        self._unstarted: Awaitable[None] | None = None  # what _busy has to finish, until it starts
        self._stopped = False
        self.heard_at = self._loop.time()  # when the broker last sent something

    @property
    def waiting_since(self) -> float | None:
        """Since when we have been waiting for the broker; None while a handler holds the reading up."""
        return None if self._busy is not None else self.heard_at

    def attach(self) -> None:
        """Read the connection from now on; redis-py's reader hears nothing more, but of its end."""
        self._transport.set_protocol(self)

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

    def _fail(self, error: Exception) -> None:
        if not self._lost.done():
            self._lost.set_exception(error)
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        self.heard_at = self._loop.time()
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                self.take(reply)
        except (hiredis.ProtocolError, redis_errors.InvalidResponse) as exc:
            self._fail(redis_errors.ConnectionError(f"protocol error: {exc}"))

    def eof_received(self) -> bool:
        return False  # close: connection_lost() follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._previous.connection_lost(exc)  # redis-py's stream ends too: its writer and its close see it
        error = redis_errors.ConnectionError("Connection closed by server.")
        error.__cause__ = exc
        if self._stopped and not self._lost.done():
            self._lost.cancel()
        elif not self._lost.done():
            self._lost.set_exception(error)

    def pause_writing(self) -> None:
        self._previous.pause_writing()  # a StreamReaderProtocol: its drain() waits for resume_writing()

    def resume_writing(self) -> None:
        self._previous.resume_writing()
