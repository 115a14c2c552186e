"""One client_id, one open connection: a second connection naming a client_id another holds is refused with
`client_id_in_use` (it would miss the other's events on resume, without a word), while an app that reconnects is
never refused, even when its new hello is read before the end of its old connection."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.client import Client, ClientError
from tests.conftest import Connect
from tests.utils import TIMEOUT, SpawnedDaemon, eventually, http_get, metric, publish_frame, run_daemon

SHARED = {"client": "worker", "client_id": "one-secret-for-two-workers"}
#: Reconnects in a row, each right after the old socket closed: the daemon may read either first.
RECONNECTS = 50


async def test_a_second_connection_with_a_held_client_id_is_refused_and_the_first_keeps_working(
    sock: Path, connect: Connect
) -> None:
    async with run_daemon(sock) as daemon:
        first = await connect(sock, SHARED)
        second = await connect(sock, None)
        await second.send({"type": "hello", **SHARED})
        error = orjson.loads(await second.closed())
        assert (error["type"], error["code"]) == ("error", "client_id_in_use")
        assert "give each process its own client_id" in error["message"]
        assert metric(daemon.metrics, "syncar_client_disconnects_total", reason="client_id_in_use") == 1
        other = await connect(sock, {"client": "other"})
        await other.send(publish_frame(data="for the first"))
        assert (await first.frame_of("event"))["data"] == "for the first"


@pytest.fixture(params=["embedded", "spawned"])
async def daemon_at(request: pytest.FixtureRequest, sock: Path) -> AsyncIterator[int]:
    """A daemon on `sock`, embedded in the test's loop or `syncar run` in its own process (uvloop): its HTTP port."""
    if request.param == "embedded":
        async with run_daemon(sock) as daemon:
            assert daemon.http is not None
            yield daemon.http.port
        return
    spawned = await SpawnedDaemon(sock).ready()
    try:
        yield spawned.http_port
    finally:
        assert await spawned.stop() == 0


async def _clients(port: int) -> int:
    """The connections the daemon has accepted, as /metrics says."""
    _, body = await http_get(port, "/metrics")
    found = re.search(r"^syncar_clients (\S+)$", body, re.MULTILINE)
    assert found, body
    return int(float(found.group(1)))


async def _app(sock: Path) -> socket.socket:
    """A connection whose every write and close happens at once, before the daemon can read anything."""
    app = socket.socket(socket.AF_UNIX)
    app.setblocking(False)
    await asyncio.get_running_loop().sock_connect(app, str(sock))
    return app


async def _welcome(app: socket.socket) -> dict[str, Any]:
    line = b""
    async with asyncio.timeout(TIMEOUT):
        while not line.endswith(b"\n"):
            chunk = await asyncio.get_running_loop().sock_recv(app, 65536)
            assert chunk, f"closed by syncar after {line!r}"
            line += chunk
    frame: dict[str, Any] = orjson.loads(line)
    return frame


async def test_a_reconnect_right_after_the_old_socket_closed_is_accepted_and_loses_nothing(
    sock: Path, daemon_at: int, connect: Connect
) -> None:
    """Each time: the new connection is accepted first, then the old one publishes and closes and the new one says
    hello, all before the daemon reads: it reads the hello with the publish read and the old one's end still unread
    (the embedded daemon always; the spawned one at times)."""
    observer = await connect(sock, {"client": "observer"})
    hello = orjson.dumps({"type": "hello", **SHARED}) + b"\n"
    old = await _app(sock)
    old.send(hello)
    assert (await _welcome(old))["type"] == "welcome"

    async def accepted() -> bool:  # the observer, the old one and the new one, and no older one
        return await _clients(daemon_at) == 3

    for n in range(RECONNECTS):
        new = await _app(sock)
        await eventually(accepted, what="the new connection accepted")
        old.send(orjson.dumps(publish_frame(data=n)) + b"\n")
        old.close()
        new.send(hello)
        welcome = await _welcome(new)
        assert welcome["type"] == "welcome", welcome
        old = new
    old.close()
    assert [event["data"] for event in await observer.events(RECONNECTS)] == list(range(RECONNECTS))


async def test_the_python_client_says_the_client_id_is_in_use(sock: Path) -> None:
    async with run_daemon(sock), Client(sock, client_id=SHARED["client_id"]):
        refused = Client(sock, client_id=SHARED["client_id"])
        async with asyncio.timeout(TIMEOUT):  # at once, not after connect()'s timeout
            with pytest.raises(ClientError, match="client_id_in_use"):
                await refused.connect()
        assert refused.connected is False
