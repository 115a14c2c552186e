"""What the broker has not taken when the daemon stops is answered: a publish that asked for an ack gets a `nack`
(`stopping`), and a barrier waiting for it its `ack`, before the last `status` (review21b, finding 4: they were
dropped unanswered, with the outbox's entries). A daemon whose broker is away for the whole --shutdown-timeout;
then the outbox itself, with a write still in flight at the stop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.client import Client, PublishRefused
from sidecar.codec import Codec, FeathersSyncCodec, SyncarCodec
from sidecar.metrics import Metrics
from sidecar.outbox import Outbox
from sidecar.protocol import ErrorCode
from tests.brokers import free_port
from tests.unit.fakes import FakeBackend, outgoing
from tests.utils import RawClient, publish_frame, run_daemon, wait_for

Answers = list[tuple[int, tuple[ErrorCode, str] | None]]


def nobody_listens() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


async def rest_of(app: RawClient) -> list[dict[str, Any]]:
    """Every frame until syncar closes the connection."""
    async with asyncio.timeout(10):
        rest = await app.reader.read()
    await app.close()
    return [orjson.loads(line) for line in rest.splitlines()]


async def test_a_publish_still_queued_at_shutdown_is_nacked(sock: Path) -> None:
    async with run_daemon(sock, backend=nobody_listens(), shutdown_timeout=0.5):
        app = await RawClient.connect(sock, {})
        assert app.welcome["broker"] == "down"
        await app.send(publish_frame(data=1, id="q1", ack=True))
        await app.send(publish_frame(data=2))  # asked for nothing: told nothing
        await app.send({"type": "ping"})
        await app.frame_of("pong")
    frames = await rest_of(app)
    assert [(f["type"], f.get("id"), f.get("code")) for f in frames] == [
        ("nack", "q1", "stopping"),
        ("status", None, None),
    ], frames
    assert frames[-1]["stopping"] is True
    assert "will not be sent" in frames[0]["message"]


async def test_a_barrier_waiting_at_shutdown_is_answered_after_the_nacks(sock: Path) -> None:
    async with run_daemon(sock, backend=nobody_listens(), shutdown_timeout=0.5):
        app = await RawClient.connect(sock, {"barriers": True})
        for n in (1, 2):
            await app.send(publish_frame(data=n, id=f"q{n}", ack=True))
        await app.send({"type": "barrier", "id": "b1"})
        await app.send({"type": "ping"})
        await app.frame_of("pong")
    frames = await rest_of(app)
    assert [(f["type"], f.get("id"), f.get("code")) for f in frames] == [
        ("nack", "q1", "stopping"),
        ("nack", "q2", "stopping"),
        ("ack", "b1", None),
        ("status", None, None),
    ], frames


async def test_what_the_broker_took_in_time_is_acked_and_nothing_nacked(sock: Path) -> None:
    async with run_daemon(sock, shutdown_timeout=0.5):  # local://: the broker takes each publish at once
        app = await RawClient.connect(sock, {})
        await app.send(publish_frame(data=1, id="q1", ack=True))
        assert await app.frame_of("ack") == {"type": "ack", "id": "q1"}
    frames = await rest_of(app)
    assert [f["type"] for f in frames] == ["status"], frames


async def test_the_python_client_sends_a_publish_nacked_stopping_again_to_the_next_daemon(sock: Path) -> None:
    client = Client(sock, backoff=(0.01, 0.1))
    try:
        async with run_daemon(sock, backend=nobody_listens(), shutdown_timeout=0.5) as daemon:
            await client.connect()
            publish = asyncio.create_task(client.publish("p", "e", "held", ack=True, timeout=10))
            await wait_for(lambda: len(daemon.outbox) == 1, what="the publish to be queued")
        await wait_for(lambda: not client.connected, what="the client to notice")
        assert not publish.done()  # the nack did not end it: the client holds the event
        async with run_daemon(sock):
            async with asyncio.timeout(10):
                await publish  # acknowledged by the next daemon
            listener = await RawClient.connect(sock, {"resume": {"epoch": "an-earlier-run", "seq": 0}})
            assert [frame["data"] for frame in await listener.events(1)] == ["held"]
            await listener.close()
    finally:
        await client.close()


async def test_without_reconnect_the_python_client_raises_the_stopping_nack(sock: Path) -> None:
    client = Client(sock, reconnect=False)
    try:
        async with run_daemon(sock, backend=nobody_listens(), shutdown_timeout=0.5) as daemon:
            await client.connect()
            publish = asyncio.create_task(client.publish("p", "e", "held", ack=True, timeout=10))
            await wait_for(lambda: len(daemon.outbox) == 1, what="the publish to be queued")
        async with asyncio.timeout(5):
            with pytest.raises(PublishRefused, match=r"^stopping: ") as refused:
                await publish
        assert refused.value.code == "stopping"
    finally:
        await client.close()


def answer(answers: Answers, n: int) -> Any:
    return lambda error: answers.append((n, error))


async def stopped_mid_write(codec: Codec) -> tuple[Outbox, FakeBackend, Answers, asyncio.Task[None]]:
    """An outbox whose write of events 1 and 2 is in flight, 3 and 4 queued behind it, when stop() is called."""
    backend = FakeBackend()
    outbox = Outbox(backend, codec, "topic", 1 << 20, Metrics("fake", "syncar"))
    answers: Answers = []
    backend.held.clear()
    for n in (1, 2):
        outbox.put(outgoing(n), answer(answers, n))
    outbox.set_connected(True)
    task = asyncio.create_task(outbox.run())
    await wait_for(lambda: backend.attempts == 1, what="the write of 1 and 2")
    for n in (3, 4):
        outbox.put(outgoing(n), answer(answers, n))
    assert outbox.stop() == 4
    assert len(outbox) == 0 and outbox.bytes == 0
    return outbox, backend, answers, task


async def test_a_write_in_flight_at_the_stop_is_stopping_where_a_copy_can_be_dropped() -> None:
    outbox, backend, answers, task = await stopped_mid_write(SyncarCodec("here"))
    assert [(n, error and error[0]) for n, error in answers] == [(n, ErrorCode.STOPPING) for n in (1, 2, 3, 4)]
    assert answers[0][1] is not None and "may or may not have reached" in answers[0][1][1]
    assert answers[2][1] is not None and "will not be sent" in answers[2][1][1]
    backend.held.set()  # the broker confirms the write after all: nothing is told twice, the task goes on
    await wait_for(lambda: backend.published != [], what="the write to end")
    later: Answers = []
    outbox.put(outgoing(5), answer(later, 5))  # refused at once, not kept unanswered
    assert later == [(5, (ErrorCode.STOPPING, "not sent to the broker: syncar is stopping"))]
    assert len(answers) == 4 and len(outbox) == 0 and outbox.bytes == 0
    assert not task.done() and await outbox.drain() is True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_write_in_flight_at_the_stop_is_unconfirmed_with_feathers_sync() -> None:
    # No id by which receivers could drop a copy: what may have reached the broker must not be published again.
    _, backend, answers, task = await stopped_mid_write(FeathersSyncCodec("here"))
    codes = [error and error[0] for _, error in answers]
    assert codes == [ErrorCode.UNCONFIRMED, ErrorCode.UNCONFIRMED, ErrorCode.STOPPING, ErrorCode.STOPPING]
    backend.held.set()
    await wait_for(lambda: backend.published != [], what="the write to end")
    assert len(answers) == 4 and not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
