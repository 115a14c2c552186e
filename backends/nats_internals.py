"""Every use of nats-py's internals, in one module: each meets a need nats-py has no public way to meet.

Nothing else of syncar touches nats-py's private members (pyproject.toml exempts this module alone from ruff's
SLF rule). An upgrade of nats-py that renames one of them makes tests/backends/test_library_internals.py fail, by
name; the backends' own tests fail too: write_with_ping() raises (every publish fails), and the getattr() defaults
make a tls:// URI refused (TLS cannot be confirmed) and leave PubAck slots taken.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats.errors
from nats.aio.client import PING_PROTO, Client
from nats.aio.subscription import Subscription as NatsSub
from nats.js import JetStreamContext
from nats.protocol.parser import AWAITING_CONTROL_LINE, AWAITING_MSG_PAYLOAD, CRLF_SIZE, Parser

from backends.base import OWN_IOVEC_BYTES, writes
from backends.inline import run_now


def offered_tls(client: Client) -> bool:
    """Whether the server's INFO asked for TLS (nats-py then upgraded the connection to it)."""
    server_info: dict[str, Any] = getattr(client, "_server_info", {})
    return bool(server_info.get("tls_required"))


def release_publish_slots(js: JetStreamContext) -> None:
    """Give back every publish_async() slot of `js` still waiting for a PubAck, by cancelling its future.

    A PubAck that never comes holds its slot forever: nats-py frees one only when its future is done.
    """
    for ack in list(getattr(js, "_publish_async_futures", {}).values()):
        ack.cancel()


_WHITESPACE = frozenset(" \t\r\n")


def write_with_ping(client: Client, subject: str = "", bodies: Sequence[bytes] = ()) -> asyncio.Future[bool]:
    """Write what nats-py holds for its flusher task, a PUB of each of `bodies` on `subject`, and a PING behind them,
    in one `writelines` (one writev under uvloop); the future is done when the server's PONG comes, so once the
    server has processed all of it.

    nats-py's flush() writes its PING straight to the socket, ahead of commands still queued (its PONG would prove
    nothing about them), and its flusher writes those in a write of their own: two system calls per batch, which at
    1,000 events/s were over half of a publishing daemon's CPU (docs/benchmarks/history.md, "Where a daemon's CPU goes
    at 1,000 events/s"). This does what publish(), the
    flusher and flush() do, on the same private state, with nothing awaited in between, so PONGs keep the order of
    the PINGs; a body of `backends.base.OWN_IOVEC_BYTES` or more goes uncopied (`writes`). nats-py's
    reader resolves a stand-in (`_Pong`), so the caller may cancel the future or settle it itself (a lost connection,
    whose PONG never comes: a reconnect forgets the PINGs in flight). The caller has checked each body against the
    server's max_payload.

    Raises:
        nats.errors.ConnectionClosedError: not connected; nothing was written.
        nats.errors.BadSubjectError: `subject` is empty or has white space (a PUB line would break); nothing was
            written.
    """
    transport = client._transport
    if transport is None:
        raise nats.errors.ConnectionClosedError
    if bodies and (not subject or not _WHITESPACE.isdisjoint(subject)):
        raise nats.errors.BadSubjectError
    pong: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    pieces, client._pending, client._pending_data_size = client._pending, [], 0
    head = b"PUB %b " % subject.encode()
    for body in bodies:
        pieces += (head, b"%d\r\n" % len(body), body, b"\r\n")
    pieces.append(PING_PROTO)
    transport.writelines(writes(pieces, OWN_IOVEC_BYTES))
    client._pongs.append(_Pong(pong))  # type: ignore[arg-type]  # all nats-py does with it is set_result(True)
    client.stats["out_msgs"] += len(bodies)
    client.stats["out_bytes"] += sum(map(len, bodies))
    return pong


class _Pong:
    """What nats-py's reader resolves for a PING of ours, in its place in `Client._pongs` (so PONGs still match PINGs
    in order): it passes the PONG on to the future only while nobody has settled or cancelled it."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self.future = future

    def set_result(self, result: bool) -> None:
        if not self.future.done():
            self.future.set_result(result)


#: nats-py's MSG_RE, matched where a control line starts in what was read (its `\\A` only at the start).
_MSG_LINE = re.compile(rb"MSG\s+(\S+)\s+(\S+)\s+((\S+)[^\S\r\n]+)?(\d+)\r\n")


def read_in_bulk(client: Client) -> None:
    """Make `client` (before it connects) parse what it reads with `BulkParser`."""
    client._ps = BulkParser(client)


#: What a subscription delivered from the reader is given: a message's payload. It must not wait for long: the
#: reader, PINGs and PONGs included, waits for it.
Deliver = Callable[[bytes], Awaitable[None]]


def deliver_from_reader(client: Client, sub: NatsSub, deliver: Deliver) -> None:
    """Have `client`'s reader give `sub`'s messages to `deliver` as it parses them, instead of queueing each for the
    subscription's Task: a turn of the loop less and no Msg per message (at 1,000 messages/s the queue, the Task
    and the Msg were ~10% of a receiving daemon's CPU, docs/benchmarks/history.md, "NATS and Redis daemons at 100 and
    1,000 events/s"). The subscription's own callback still
    gets what nats-py queued before this."""
    parser = client._ps
    if isinstance(parser, BulkParser):
        parser.routes[sub._id] = (sub, deliver)


def stop_delivering(client: Client, sub: NatsSub) -> None:
    """Undo `deliver_from_reader`: `sub`'s messages, if any still come, go nats-py's way."""
    parser = client._ps
    if isinstance(parser, BulkParser):
        parser.routes.pop(sub._id, None)


class BulkParser(Parser):
    """nats-py's parser, with a MSG's payload taken out of what was read in one copy.

    nats-py's own adds each read to a buffer, then copies a payload out of it twice (`bytes(buf[:n])`): three copies
    of every message, which for a batch of 1 MiB in reads of 32 KiB were most of a receiving daemon's copying
    (docs/benchmarks/history.md, "Full speed, second round"). Here a MSG's control line is matched in the read itself
    and its payload is cut from it, or
    joined once from the reads it spans. A control line cut by a read, any other operation (PING, PONG, INFO, -ERR,
    +OK) and a message with headers (HMSG) go nats-py's own way, through its buffer; a payload that way left
    unfinished is taken up here.
    """

    def __init__(self, nc: Any) -> None:
        super().__init__(nc)
        # The subscriptions delivered from here, by sid: they keep their sids across nats-py's reconnects (and
        # reset()), as nats-py restores them.
        self.routes: dict[int, tuple[NatsSub, Deliver]] = {}
        self._stream: asyncio.StreamReader | None = None  # the connection read as its bytes arrive (_ReadHere)

    def reset(self) -> None:
        super().reset()
        self._held: list[bytes | memoryview] = []  # the payload's bytes so far, in the reads they came in
        self._held_bytes = 0

    async def parse(self, data: bytes = b"") -> None:
        """What nats-py's reader Task read: on the first read of a connection, it is read here from then on."""
        stream = getattr(getattr(self.nc, "_transport", None), "_io_reader", None)
        if stream is not self._stream and isinstance(stream, asyncio.StreamReader):
            self._stream = stream
            _ReadHere.attach(self, self.nc._transport._io_writer.transport, stream)
        await self.feed(data)

    async def feed(self, data: bytes) -> None:
        """Parse `data`, what came after all that was parsed before."""
        if self.header_needed or (self.buf and self.state == AWAITING_CONTROL_LINE):
            await super().parse(data)
            return
        if self.buf:  # the start of a payload, left in the buffer by nats-py's own way
            self._held.append(bytes(self.buf))
            self._held_bytes += len(self.buf)
            self.buf.clear()
        position, end = 0, len(data)
        while position < end:
            if self.state == AWAITING_MSG_PAYLOAD:
                position = await self._payload(data, position)
                if position < 0:
                    return
                continue
            line = _MSG_LINE.match(data, position)
            if line is None:  # another operation, or a line cut short: nats-py's way, from here on
                await super().parse(data[position:])
                return
            subject, sid, _, reply, size = line.groups()
            self.msg_arg = {"subject": subject, "sid": int(sid), "reply": reply or b""}
            self.needed = int(size)
            self.state = AWAITING_MSG_PAYLOAD
            position = line.end()

    async def _payload(self, data: bytes, position: int) -> int:
        """Deliver the awaited payload if `data` from `position` completes it, and return where what follows it
        starts; else hold what there is of it and return -1."""
        wanted = self.needed + CRLF_SIZE - self._held_bytes
        if len(data) - position < wanted:
            self._held.append(memoryview(data)[position:] if position else data)
            self._held_bytes += len(data) - position
            return -1
        stop = position + wanted - CRLF_SIZE  # before `position` if the held bytes end with the CRLF's first
        if self._held:
            if stop < position:
                self._held[-1] = memoryview(self._held[-1])[: stop - position]
            else:
                self._held.append(memoryview(data)[position:stop])
            payload = b"".join(self._held)
            self._held, self._held_bytes = [], 0
        else:
            payload = data[position:stop]
        self.state = AWAITING_CONTROL_LINE
        arg = self.msg_arg
        route = self.routes.get(arg["sid"])
        # What nats-py queued for the subscription's Task before the route was made goes first, that way.
        if route is None or route[0].pending_msgs:
            await self.nc._process_msg(arg["sid"], arg["subject"], arg["reply"], payload, None)
        else:
            stats = self.nc.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(payload)
            await route[1](payload)
        return position + wanted


class _ReadHere(asyncio.Protocol):
    """A nats-py connection's transport, read here in place of its StreamReader while nats-py's reader Task waits
    for it: each read parsed in the loop's I/O callback, its messages delivered there (`deliver_from_reader`).

    Through the StreamReader, each read woke the reader Task a turn of the loop later, and was copied in and out of
    the stream's buffer. What the reader Task is already busy with, or has yet to take, goes first: while it is not
    waiting on an empty stream, reads go to the stream, as before. A parse that has to wait (an -ERR's callback, a
    handler that waits) is finished in a Task with the reading paused, so that reads are parsed one after another
    and in order. The end of the connection goes to the stream: nats-py's reader hears it and reconnects.
    """

    def __init__(
        self,
        parser: BulkParser,
        transport: asyncio.Transport,
        previous: asyncio.StreamReaderProtocol,
        stream: asyncio.StreamReader,
    ) -> None:
        self._parser, self._transport, self._previous, self._stream = parser, transport, previous, stream
        self._busy = False  # a parse that had to wait is being finished
        self._held: deque[bytes] = deque()  # what came meanwhile (the reading is paused, but a TLS record may end)

    @classmethod
    def attach(cls, parser: BulkParser, transport: asyncio.Transport, stream: asyncio.StreamReader) -> None:
        previous = transport.get_protocol()
        if isinstance(previous, asyncio.StreamReaderProtocol):  # else not what nats-py made: left alone
            transport.set_protocol(cls(parser, transport, previous, stream))

    def data_received(self, data: bytes) -> None:
        if self._busy:
            self._held.append(data)
        elif not _waits_on_nothing(self._stream):
            self._previous.data_received(data)
        else:
            try:
                rest = run_now(self._parser.feed(data))
            except Exception as exc:
                self._stream.set_exception(exc)  # nats-py's reader raises it, as if it had parsed this itself
                return
            if rest is not None:
                self._busy = True
                self._transport.pause_reading()
                asyncio.get_running_loop().create_task(self._finish(rest))

    async def _finish(self, rest: Awaitable[None]) -> None:
        try:
            await rest
            while self._held:
                await self._parser.feed(self._held.popleft())
        except Exception as exc:
            self._held.clear()
            self._stream.set_exception(exc)
        finally:
            self._busy = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    def eof_received(self) -> bool | None:
        return self._previous.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._previous.pause_writing()  # its drain() waits for resume_writing()

    def resume_writing(self) -> None:
        self._previous.resume_writing()


def _waits_on_nothing(stream: asyncio.StreamReader) -> bool:
    """Whether a Task waits on `stream`, which holds nothing: a read given to it would be its next."""
    return stream._waiter is not None and not stream._buffer  # type: ignore[attr-defined]  # asyncio's own state
