"""Every use of nats-py's internals, in one module: each meets a need nats-py has no public way to meet.

Nothing else of syncar touches nats-py's private members (pyproject.toml exempts this module alone from ruff's
SLF rule). An upgrade of nats-py that renames one of them makes tests/backends/test_library_internals.py fail, by
name; the backends' own tests fail too: write_with_ping() raises (every publish fails), and the getattr() defaults
make a tls:// URI refused (TLS cannot be confirmed) and leave PubAck slots taken.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
from nats.aio.client import PING_PROTO, Client
from nats.js import JetStreamContext


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


def write_with_ping(client: Client) -> asyncio.Future[bool]:
    """Write what nats-py holds for its flusher task and a PING behind it, in one write; the future is done when the
    server's PONG comes, so once the server has processed all of it.

    nats-py's flush() writes its PING straight to the socket, ahead of commands still queued (its PONG would prove
    nothing about them), and its flusher writes those in a write of their own: two system calls per batch, which at
    1,000 events/s were over half of a publishing daemon's CPU (docs/benchmarks.md). This does what the flusher and
    flush() do, on the same private state, with nothing awaited in between, so PONGs keep the order of the PINGs.
    The caller must not cancel the future (nats-py's reader resolves it; a reconnect forgets it).
    """
    transport = client._transport
    if transport is None:
        raise nats.errors.ConnectionClosedError
    pong: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    pending, client._pending, client._pending_data_size = client._pending, [], 0
    transport.writelines([*pending, PING_PROTO])
    client._pongs.append(pong)
    return pong
