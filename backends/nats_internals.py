"""Every use of nats-py's internals, in one module: each meets a need nats-py has no public way to meet.

Nothing else of syncar touches nats-py's private members (pyproject.toml exempts this module alone from ruff's
SLF rule). An upgrade of nats-py that renames one of them makes tests/backends/test_library_internals.py fail, by
name; the backends' own tests fail too: write_with_ping() raises (every publish fails), and the getattr() defaults
make a tls:// URI refused (TLS cannot be confirmed) and leave PubAck slots taken.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.client import PING_PROTO, Client
from nats.js import JetStreamContext
from nats.protocol.parser import AWAITING_CONTROL_LINE, AWAITING_MSG_PAYLOAD, CRLF_SIZE, Parser

from backends.base import OWN_IOVEC_BYTES, writes


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
    1,000 events/s were over half of a publishing daemon's CPU (docs/benchmarks.md). This does what publish(), the
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


class BulkParser(Parser):
    """nats-py's parser, with a MSG's payload taken out of what was read in one copy.

    nats-py's own adds each read to a buffer, then copies a payload out of it twice (`bytes(buf[:n])`): three copies
    of every message, which for a batch of 1 MiB in reads of 32 KiB were most of a receiving daemon's copying
    (docs/benchmarks.md). Here a MSG's control line is matched in the read itself and its payload is cut from it, or
    joined once from the reads it spans. A control line cut by a read, any other operation (PING, PONG, INFO, -ERR,
    +OK) and a message with headers (HMSG) go nats-py's own way, through its buffer; a payload that way left
    unfinished is taken up here.
    """

    def reset(self) -> None:
        super().reset()
        self._held: list[bytes | memoryview] = []  # the payload's bytes so far, in the reads they came in
        self._held_bytes = 0

    async def parse(self, data: bytes = b"") -> None:
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
        await self.nc._process_msg(arg["sid"], arg["subject"], arg["reply"], payload, None)
        return position + wanted
