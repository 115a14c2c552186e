"""Every use of nats-py's internals, in one module: each meets a need nats-py has no public way to meet.

Nothing else of syncar touches nats-py's private members (pyproject.toml exempts this module alone from ruff's
SLF rule). An upgrade of nats-py that renames one of them makes tests/backends/test_library_internals.py fail, by
name; the backends' own tests fail too: write_with_ping() raises (every publish fails), and the getattr() defaults
make a tls:// URI refused (TLS cannot be confirmed) and leave PubAck slots taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.client import PING_PROTO, Client
from nats.js import JetStreamContext

from backends.base import writes


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
    at once; the future is done when the server's PONG comes, so once the server has processed all of it.

    nats-py's flush() writes its PING straight to the socket, ahead of commands still queued (its PONG would prove
    nothing about them), and its flusher writes those in a write of their own: two system calls per batch, which at
    1,000 events/s were over half of a publishing daemon's CPU (docs/benchmarks.md). This does what publish(), the
    flusher and flush() do, on the same private state, with nothing awaited in between, so PONGs keep the order of
    the PINGs; a body of `backends.base.OWN_WRITE_BYTES` or more is written by itself, uncopied (`writes`). nats-py's
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
    for data in writes(pieces):
        transport.write(data)
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
