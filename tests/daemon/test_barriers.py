"""Acknowledgements by barrier (docs/protocol.md#barrier): one `ack` for many publishes, negotiated in `hello`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.brokers import BrokerServer, free_port
from tests.conftest import Connect
from tests.faults.proxy import TcpProxy
from tests.utils import RawClient, publish_frame, run_daemon, wait_for


async def _frames_until(client: RawClient, kind: str, frame_id: str) -> list[dict[str, Any]]:
    """The frames `client` gets up to and with the first of type `kind` with id `frame_id`."""
    frames = [await client.frame()]
    while frames[-1].get("type") != kind or frames[-1].get("id") != frame_id:
        frames.append(await client.frame())
    return frames


async def test_a_barrier_acknowledges_every_publish_before_it_in_one_frame(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock):
        app = await connect(sock, {"barriers": True})
        assert app.welcome["barriers"] is True
        for n in range(5):
            await app.send(publish_frame(data=n, id=f"e{n}", ack=True))
        await app.send({"type": "barrier", "id": "b1"})
        await app.send({"type": "ping"})
        frames = await _frames_until(app, "ack", "b1")
        assert [frame["type"] for frame in frames if frame["type"] != "pong"] == ["ack"]
        # Nothing is left to say of the publishes: a barrier with none before it is answered at once.
        await app.send({"type": "barrier", "id": "b2"})
        await app.send({"type": "ping"})
        assert [await app.frame() for _ in range(2)] == [{"type": "ack", "id": "b2"}, {"type": "pong"}]


async def test_without_asking_each_publish_is_acknowledged_and_a_barrier_refused(sock: Path, connect: Connect) -> None:
    """What an app written before barriers sees is unchanged, and a barrier it did not ask for is no promise."""
    async with run_daemon(sock):
        app = await connect(sock, {})
        assert "barriers" not in app.welcome
        await app.send(publish_frame(data=1, id="e1", ack=True))
        assert await app.frame() == {"type": "ack", "id": "e1"}
        await app.send({"type": "barrier", "id": "b1"})
        error = await app.frame()
        assert (error["type"], error["code"], error["id"]) == ("error", "invalid_frame", "b1"), error
        await app.send({"type": "barrier"})
        assert "'id' must be a string" in (await app.frame())["message"]


async def test_a_refused_publish_is_told_and_counted_before_its_barrier(sock: Path, connect: Connect) -> None:
    """The outbox (1 KiB) takes the first publish of the write and refuses the second: a `nack` for it, then the
    barrier's `ack`, which does not wait for the refused one."""
    async with run_daemon(sock, outbox_bytes=1024):
        app = await connect(sock, {"barriers": True})
        lines = [publish_frame(data=n, id=f"e{n}", ack=True) for n in range(2)]
        await app.send(b"".join(orjson.dumps(frame) + b"\n" for frame in [*lines, {"type": "barrier", "id": "b1"}]))
        frames = await _frames_until(app, "ack", "b1")
        assert [(frame["type"], frame["id"], frame.get("code")) for frame in frames] == [
            ("nack", "e1", "outbox_full"),
            ("ack", "b1", None),
        ]


@pytest.mark.redis
async def test_a_barrier_waits_for_the_broker(redis_server: BrokerServer, sock: Path, connect: Connect) -> None:
    """The broker away, publishes wait in the outbox and so does the barrier behind them: answered once the broker
    has them."""
    port = free_port()  # where the broker will appear
    async with run_daemon(sock, backend=f"redis://127.0.0.1:{port}/0", reconnect_max_delay=0.5) as daemon:
        app = await connect(sock, {"barriers": True})
        assert app.welcome["broker"] == "down"
        for n in range(3):
            await app.send(publish_frame(data=n, id=f"e{n}", ack=True))
        await app.send({"type": "barrier", "id": "b1"})
        await app.send({"type": "ping"})
        assert await app.frame() == {"type": "pong"}  # the barrier was read, and not answered
        assert len(daemon.outbox) == 3
        proxy = await TcpProxy.start(redis_server.port, port=port)
        try:
            frames = await _frames_until(app, "ack", "b1")
            assert [frame["type"] for frame in frames if frame["type"] != "status"] == ["ack"]
            await wait_for(lambda: len(daemon.outbox) == 0, what="the outbox empty")
        finally:
            await proxy.close()


DATA = "x" * 200  # one such publish costs ~1.4 KB of --outbox-bytes: one fits in 2,000, two do not


async def test_a_publish_refused_at_the_door_does_not_answer_a_barrier_before_it(sock: Path, connect: Connect) -> None:
    # e0 waits for the broker, b1 follows, e1 is refused (outbox_full): b1 waits for e0 (counted as settled in e0's
    # stead, it was answered, and the plugin let go of e0 while it was only in the outbox).
    port = free_port()  # nothing listens there: the broker is away for the whole test
    async with run_daemon(sock, backend=f"redis://127.0.0.1:{port}/0", outbox_bytes=2000) as daemon:
        app = await connect(sock, {"barriers": True})
        assert app.welcome["broker"] == "down"
        frames = [
            publish_frame(data=DATA, id="e0", ack=True),
            {"type": "barrier", "id": "b1"},
            publish_frame(data=DATA, id="e1", ack=True),
            {"type": "ping"},
        ]
        await app.send(b"".join(orjson.dumps(frame) + b"\n" for frame in frames))
        nack, pong = await app.frame(), await app.frame()
        assert (nack["type"], nack["id"], nack["code"]) == ("nack", "e1", "outbox_full")
        assert pong == {"type": "pong"}  # and no ack of b1 before it
        assert len(daemon.outbox) == 1  # e0, still waiting for the broker


async def test_barriers_waiting_for_the_broker_are_bounded(sock: Path, connect: Connect) -> None:
    port = free_port()
    async with run_daemon(sock, backend=f"redis://127.0.0.1:{port}/0"):
        app = await connect(sock, {"barriers": True})
        await app.send(publish_frame(data=1, id="e0", ack=True))  # waits for the broker: so does every barrier
        await app.send(b"".join(orjson.dumps({"type": "barrier", "id": f"b{n}"}) + b"\n" for n in range(65)))
        await app.send({"type": "ping"})
        refused = await app.frame()
        assert (refused["type"], refused["code"], refused["id"]) == ("error", "rate_limited", "b64")
        assert "64 barriers already wait" in refused["message"]
        assert await app.frame() == {"type": "pong"}  # the connection stays
