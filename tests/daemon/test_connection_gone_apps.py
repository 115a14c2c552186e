"""Apps that leave, or end their input, while publishes of theirs that asked for an ack wait for the broker
(review21b): a gone app leaves nothing behind but what the outbox counts, and one that half-closed still gets the
answers it is owed, then is closed."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.connection import Connection
from sidecar.daemon import Daemon
from tests.brokers import BrokerServer, free_port
from tests.conftest import Connect
from tests.faults.proxy import TcpProxy
from tests.utils import RawClient, metric, publish_frame, run_daemon, wait_for

MiB = 1 << 20
APPS = 32
MODES = [pytest.param({}, id="each"), pytest.param({"barriers": True}, id="barriers")]


def _connections() -> int:
    return sum(isinstance(thing, Connection) for thing in gc.get_objects())


def _clients(daemon: Daemon) -> float:
    return metric(daemon.metrics, "syncar_clients")


async def _owe(app: RawClient, hello: dict[str, Any], n: int) -> None:
    """Publish event `n` with an ack, and a barrier after it on a connection acknowledged by barriers."""
    await app.send(publish_frame(data=n, id=f"e{n}", ack=True))
    if hello.get("barriers"):
        await app.send({"type": "barrier", "id": f"b{n}"})


async def _ended(app: RawClient, other: RawClient) -> None:
    """End `app`'s input (shutdown(SHUT_WR)), and make sure the daemon has read that end: a round trip on `other`
    takes turns of its loop, and the end was there to read before the first."""
    app.writer.write_eof()
    await other.send({"type": "ping"})
    await other.frame_of("pong")


@pytest.mark.parametrize("half_close", [False, True], ids=["closes", "half-closes"])
@pytest.mark.parametrize("hello", MODES)
async def test_an_app_leaving_with_answers_owed_leaves_its_unfinished_line_behind(
    sock: Path, connect: Connect, hello: dict[str, Any], half_close: bool
) -> None:
    """Each app publishes a small event with an ack while the broker is away, sends 1 MiB of a line and leaves (or
    ends its input). The outbox counts ~1 KiB for each; its ack's callback held the whole Connection, with the
    unfinished line: +1 MiB a gone app (33 MiB traced for 32 of them before the fix; under 1 MiB after). One that
    half-closed waits for its answers, without the line."""
    async with run_daemon(sock, backend=f"redis://127.0.0.1:{free_port()}/0", replay_events=0) as daemon:
        probe = await connect(sock, {})
        assert probe.welcome["broker"] == "down"
        unfinished = b'{"type":"publish","path":"p","event":"e","data":"' + b"x" * (MiB - 100)
        connections = _connections()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(APPS):
                app = await (connect(sock, hello) if half_close else RawClient.connect(sock, hello))
                await _owe(app, hello, n)
                await app.send(unfinished)
                if half_close:
                    await _ended(app, probe)
                else:
                    await app.close()  # closed at once, though answers are owed: nobody is there to hear them
                    await wait_for(lambda: _clients(daemon) == 1, what="the gone app's connection to close")
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(daemon.outbox) == APPS  # the acks are still owed
        assert _clients(daemon) == (1 + APPS if half_close else 1)
        assert held < APPS * MiB / 8, f"{held / MiB:.1f} MiB held for {APPS} apps' acks"
        if not half_close:
            assert _connections() <= connections


@pytest.mark.parametrize("hello", MODES)
async def test_an_app_gone_with_answers_owed_is_closed_at_once(
    sock: Path, connect: Connect, hello: dict[str, Any]
) -> None:
    """Its end read, the daemon sees the peer closed its socket, not only its writing: nobody is there to be told."""
    async with run_daemon(sock, backend=f"redis://127.0.0.1:{free_port()}/0") as daemon:
        other = await connect(sock, {})
        app = await RawClient.connect(sock, hello)
        await _owe(app, hello, 1)
        assert (await other.frame_of("event"))["data"] == 1
        await app.close()
        await wait_for(lambda: _clients(daemon) == 1, timeout=5, what="the gone app's connection to close")


@pytest.mark.redis
@pytest.mark.parametrize("hello", MODES)
async def test_an_app_that_ended_its_input_gets_the_answers_it_is_owed_and_nothing_else(
    redis_server: BrokerServer, sock: Path, connect: Connect, hello: dict[str, Any]
) -> None:
    """`printf ... | nc -U`: the app half-closes after its publish. While the broker is away the connection stays
    open (it closed at once, the ack lost, before the fix); the truncated line is told at once; events and the
    broker's status no longer go to it; its answer does once the broker comes, then the connection closes."""
    port = free_port()  # where the broker will appear
    async with run_daemon(sock, backend=f"redis://127.0.0.1:{port}/0", reconnect_max_delay=0.5) as daemon:
        app, other = await connect(sock, hello), await connect(sock, {})
        assert app.welcome["broker"] == "down"
        await _owe(app, hello, 1)
        await app.send(b'{"type":"publish","path":"p","event":"e","data":"cut sho')
        assert (await other.frame_of("event"))["data"] == 1
        await _ended(app, other)
        assert _clients(daemon) == 2  # the app's connection waits for the broker
        truncated = await app.frame()
        assert (truncated["type"], truncated["code"]) == ("error", "truncated_frame"), truncated
        await other.send(publish_frame(data=2))
        proxy = await TcpProxy.start(redis_server.port, port=port)
        try:
            rest = await app.closed(timeout=30)
        finally:
            await proxy.close()
        answer = {"type": "ack", "id": "b1" if hello else "e1"}
        assert [orjson.loads(line) for line in rest.splitlines()] == [answer]
        await wait_for(lambda: _clients(daemon) == 1, what="the app's connection to be gone")


async def test_an_app_that_ended_its_input_waiting_for_the_broker_is_closed_at_the_stop(
    sock: Path, connect: Connect
) -> None:
    """The wait for a broker that never comes back ends with the daemon's stop, and its `nack`."""
    async with run_daemon(sock, backend=f"redis://127.0.0.1:{free_port()}/0", shutdown_timeout=0.5) as daemon:
        app, other = await connect(sock, {}), await connect(sock, {})
        await _owe(app, {}, 1)
        assert (await other.frame_of("event"))["data"] == 1
        await _ended(app, other)
        assert _clients(daemon) == 2
    frames = [orjson.loads(line) for line in (await app.closed()).splitlines()]
    assert [(frame["type"], frame["id"], frame["code"]) for frame in frames] == [("nack", "e1", "stopping")], frames


async def test_an_app_that_ended_its_input_then_closed_its_socket_is_not_waited_for(
    sock: Path, connect: Connect
) -> None:
    """As `socat` does 0.5 s after the end of its input: the daemon, which reads no more from it, looks now and then,
    and does not hold a place of --max-clients for it until the broker comes back."""
    async with run_daemon(sock, backend=f"redis://127.0.0.1:{free_port()}/0") as daemon:
        app, other = await RawClient.connect(sock, {}), await connect(sock, {})
        await _owe(app, {}, 1)
        assert (await other.frame_of("event"))["data"] == 1
        await _ended(app, other)
        assert _clients(daemon) == 2
        await app.close()
        await wait_for(lambda: _clients(daemon) == 1, what="the gone app's connection to close")
        assert len(daemon.outbox) == 1  # its publish still waits for the broker
