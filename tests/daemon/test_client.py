"""The Python client against a real daemon: publish, ack, receive, reconnect, resume, pending publishes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.base import Message
from sidecar.client import AckTimeout, Client, ClientError, Gap, PendingFull, PublishRefused
from sidecar.codec import SyncarCodec
from tests.unit.fakes import outgoing
from tests.utils import RawClient, metric, run_daemon, wait_for


async def test_publish_with_ack_and_receive(sock: Path) -> None:
    async with run_daemon(sock, instance_id="one"), Client(sock, name="a") as a, Client(sock, name="b") as b:
        await a.publish("messages", "created", {"text": "hi"}, {"params": {}}, id="m1", ack=True)
        event = await b.next_event(timeout=5)
        assert (event.id.partition(".")[2], event.path, event.event, event.data, event.context, event.origin) == (
            "m1",
            "messages",
            "created",
            {"text": "hi"},
            {"params": {}},
            "one",
        )
        assert a.instance == "one"
        assert a.broker_up


async def test_a_binary_event_arrives_as_its_bytes(sock: Path) -> None:
    """What a Node app with a BSON serializer publishes (`bin`, docs/protocol.md) reaches a Python app as the bytes."""
    bson = b"\x16\x00\x00\x00\x02path\x00\x09\x00\x00\x00messages\x00\x00"
    async with run_daemon(sock), Client(sock) as b:
        raw = await RawClient.connect(sock, {"client": "node-with-bson"})
        await raw.send(
            {"type": "publish", "path": "messages", "event": "created", "bin": base64.b64encode(bson).decode()}
        )
        event = await b.next_event(timeout=5)
        await raw.close()
        assert (event.path, event.event, event.data, event.bin) == ("messages", "created", None, bson)


async def test_a_binary_event_published_from_python_arrives_as_its_bytes(sock: Path) -> None:
    """`publish(bin=...)`: a Python app with a binary serializer; a raw app reads the frame the protocol promises."""
    msgpack = bytes(range(256))  # every byte value, NUL and non-UTF-8 ones included
    async with run_daemon(sock), Client(sock) as a, Client(sock) as b:
        raw = await RawClient.connect(sock, {"client": "reader"})
        await a.publish("messages", "created", bin=msgpack, id="b1", ack=True)
        event = await b.next_event(timeout=5)
        frame = await raw.frame_of("event")
        await raw.close()
        assert (event.path, event.event, event.data, event.context, event.bin) == (
            "messages",
            "created",
            None,
            None,
            msgpack,
        )
        assert base64.b64decode(frame["bin"], validate=True) == msgpack
        with pytest.raises(ValueError, match="data and context must be None"):
            await a.publish("messages", "created", {"text": "hi"}, bin=msgpack)


async def test_subscription_patterns(sock: Path) -> None:
    async with (
        run_daemon(sock),
        Client(sock) as pub,
        Client(sock, subscribe=[{"path": "users", "event": "removed"}]) as sub,
    ):
        await pub.publish("users", "created", 1)
        await pub.publish("users", "removed", 2, ack=True)
        assert (await sub.next_event(timeout=5)).data == 2


async def test_connect_to_nothing_fails_with_a_clear_error(sock: Path) -> None:
    client = Client(sock, reconnect=False)
    with pytest.raises(ClientError, match="cannot connect"):
        await client.connect(timeout=2)
    await client.close()


async def test_reconnect_resumes_without_loss_or_duplicates(sock: Path) -> None:
    async with run_daemon(sock) as daemon, Client(sock) as pub, Client(sock, backoff=(0.01, 0.05)) as sub:
        await pub.publish("p", "e", 0, ack=True)
        assert (await sub.next_event(timeout=5)).data == 0
        # Cut sub's connection from the daemon side, then keep publishing while it comes back.
        victim = next(c for c in daemon.connections if c.client_id == sub.client_id)
        victim.close()
        for i in range(1, 50):
            await pub.publish("p", "e", i)
        await pub.publish("p", "e", 50, ack=True)
        received = [(await sub.next_event(timeout=5)).data for _ in range(50)]
        assert received == list(range(1, 51))
        assert sub.gaps == 0


async def test_publishes_made_while_daemon_is_down_are_sent_after_restart(sock: Path) -> None:
    async with run_daemon(sock):
        client = Client(sock, backoff=(0.01, 0.1))
        await client.connect()
    # The daemon is gone: publishes wait in the client.
    await wait_for(lambda: not client.connected, what="the client to notice")
    for i in range(3):
        await client.publish("p", "e", i)
    try:
        async with run_daemon(sock):
            await wait_for(lambda: client.connected, what="the client to reconnect")
            await client.publish("p", "e", 3, ack=True)
            # The held publishes may reach the daemon before any listener could join: read them back from the
            # replay buffer, as a client of an earlier run resuming here would.
            listener = await RawClient.connect(sock, {"resume": {"epoch": "an-earlier-run", "seq": 0}})
            assert [frame["data"] for frame in await listener.events(4)] == [0, 1, 2, 3]
            assert client.gaps == 1  # a new daemon cannot replay the old one's events, and says so
            await listener.close()
    finally:
        await client.close()


async def test_pending_publishes_are_bounded(sock: Path) -> None:
    async with run_daemon(sock):
        client = Client(sock, max_pending=2, backoff=(0.01, 0.1))
        await client.connect()
    try:
        await wait_for(lambda: not client.connected, what="the client to notice")
        await client.publish("p", "e", 1)
        await client.publish("p", "e", 2)
        with pytest.raises(PendingFull):
            await client.publish("p", "e", 3)
    finally:
        await client.close()


async def test_publishes_made_while_the_backlog_is_flushed_are_not_stranded(
    sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishes made while the backlog written on reconnect is still on its way go out after it, none held back.

    The client's wait for the backlog to be written (its `drain()`) is held until the test has published more, so
    the publishes land in that window every time.
    """
    async with run_daemon(sock):
        client = Client(sock, backoff=(0.01, 0.05))
        await client.connect()
    await wait_for(lambda: not client.connected, what="the client to notice")
    backlog = 100
    for n in range(backlog):
        await client.publish("p", "e", {"n": n})
    client.instance = None  # set again by the next welcome, before the backlog is written

    flushing, release = asyncio.Event(), asyncio.Event()
    held = 0
    drain = asyncio.StreamWriter.drain

    async def held_drain(writer: asyncio.StreamWriter) -> None:
        nonlocal held
        # The client's side of the socket (its peer is the daemon's path), once welcomed.
        if client.instance is not None and writer.get_extra_info("peername") == str(sock) and not release.is_set():
            flushing.set()
            held += 1
            await release.wait()
        await drain(writer)

    monkeypatch.setattr(asyncio.StreamWriter, "drain", held_drain)
    try:
        async with run_daemon(sock) as daemon:
            async with asyncio.timeout(10):
                await flushing.wait()
            during = [asyncio.create_task(client.publish("p", "e", {"n": n})) for n in range(backlog, 2 * backlog)]
            # Each publish has written its line and waits on the held drain, or has returned (held by the client).
            await wait_for(
                lambda: held - 1 + sum(task.done() for task in during) == backlog,
                what="the publishes made during the flush",
            )
            release.set()
            await asyncio.gather(*during)
            await client.publish("p", "e", {"n": "last"}, ack=True)
            # Everything this run of the daemon relayed, from its replay buffer.
            listener = await RawClient.connect(sock, {"resume": {"epoch": daemon.relay.epoch, "seq": 0}})
            seen = [(await listener.frame_of("event"))["data"]["n"]]
            while seen[-1] != "last":
                seen.append((await listener.frame_of("event"))["data"]["n"])
            await listener.close()
            assert seen == [*range(2 * backlog), "last"]
    finally:
        await client.close()


async def test_an_event_the_client_cannot_read_is_skipped_not_fatal(sock: Path) -> None:
    async with run_daemon(sock), Client(sock) as sub:
        raw = await RawClient.connect(sock, {"client": "other-language"})
        # Valid JSON, passed through as sent; orjson has no float this big.
        await raw.send(b'{"type":"publish","path":"p","event":"e","data":1e999}\n')
        await raw.send({"type": "publish", "path": "p", "event": "e", "data": 2})
        assert (await sub.next_event(timeout=5)).data == 2
        assert sub.connected
        await raw.close()


@pytest.mark.parametrize(
    ("publish", "code"),
    [
        ({"path": ""}, "invalid_frame"),
        ({"id": "i" * 300}, "invalid_frame"),
    ],
    ids=["empty path", "id of 300 characters"],
)
async def test_a_publish_the_daemon_refuses_raises_at_once(sock: Path, publish: dict[str, Any], code: str) -> None:
    async with run_daemon(sock), Client(sock) as client:
        async with asyncio.timeout(5):  # it used to wait for an ack forever
            with pytest.raises(PublishRefused) as refused:
                await client.publish(**{"path": "p", "event": "e", "ack": True, **publish})
        assert refused.value.code == code
        await client.publish("p", "e", ack=True)  # and the connection is fine


async def test_a_publish_over_the_daemons_frame_limit_is_refused_before_sending(sock: Path) -> None:
    async with run_daemon(sock, max_frame_bytes=64 * 1024) as daemon, Client(sock) as client:
        assert client.max_frame_bytes == 64 * 1024  # from the welcome
        for ack in (True, False):
            with pytest.raises(PublishRefused, match="at most 65536") as refused:
                await client.publish("p", "e", "x" * 2_000_000, ack=ack)
            assert refused.value.code == "frame_too_large"
        await client.publish("p", "e", "x" * 60_000, ack=True)
        # Nothing too large was sent: the daemon never had to refuse a frame.
        assert metric(daemon.metrics, "syncar_frame_errors_total", code="frame_too_large") == 0


async def test_publishes_held_before_the_welcome_are_checked_against_its_limit(sock: Path) -> None:
    async with run_daemon(sock):
        client = Client(sock, backoff=(0.01, 0.05))
        await client.connect()
    await wait_for(lambda: not client.connected, what="the client to notice")
    client.max_frame_bytes = None  # as if it had never been told
    big = asyncio.create_task(client.publish("p", "e", "x" * 100_000, ack=True))
    await client.publish("p", "e", "small")
    try:
        async with run_daemon(sock, max_frame_bytes=64 * 1024):
            async with asyncio.timeout(5):
                with pytest.raises(PublishRefused, match="frame_too_large"):
                    await big
            listener = await RawClient.connect(sock, {"resume": {"epoch": "an-earlier-run", "seq": 0}})
            assert [frame["data"] for frame in await listener.events(1)] == ["small"]
            await listener.close()
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def fake_daemon(sock: Path, on_publish: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[None]:
    """A socket that welcomes like syncar and then handles each publish with `on_publish`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                frame = orjson.loads(line)
                if frame["type"] == "hello":
                    writer.write(
                        orjson.dumps(
                            {
                                "type": "welcome",
                                "version": 1,
                                "instance": "fake",
                                "broker": "down",
                                "epoch": "e",
                                "seq": 0,
                                "max_frame_bytes": 1024,
                            }
                        )
                        + b"\n"
                    )
                elif frame["type"] == "publish":
                    await on_publish(writer)
        writer.close()

    server = await asyncio.start_unix_server(serve, sock)
    async with server:
        yield


async def test_publish_with_ack_times_out_with_its_own_exception(sock: Path) -> None:
    async def never_ack(writer: asyncio.StreamWriter) -> None:
        pass

    async with fake_daemon(sock, never_ack), Client(sock) as client:
        async with asyncio.timeout(5):
            with pytest.raises(
                AckTimeout, match=r"no ack within 0\.2s: syncar has it in its outbox; its broker is down"
            ) as timed_out:
                await client.publish("p", "e", ack=True, timeout=0.2)
        assert timed_out.value.queued
        assert isinstance(timed_out.value, TimeoutError)


async def test_pending_acks_fail_at_once_when_the_connection_is_lost_without_reconnect(sock: Path) -> None:
    async def hang_up(writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with fake_daemon(sock, hang_up):
        client = Client(sock, reconnect=False)
        await client.connect()
        try:
            async with asyncio.timeout(5):
                with pytest.raises(ClientError, match="lost, and reconnect is off"):
                    await client.publish("p", "e", ack=True, timeout=None)
                assert [event async for event in client] == []  # the iteration ends too
            with pytest.raises(ClientError, match="not connected"):
                await client.publish("p", "e")
        finally:
            await client.close()


def test_client_without_a_path_connects_where_the_daemon_listens_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.config import Settings

    monkeypatch.delenv("SYNCAR_SOCKET", raising=False)
    assert Client().socket == Settings().socket
    monkeypatch.setenv("SYNCAR_SOCKET", "/elsewhere/syncar.sock")
    assert Client().socket == Settings().socket == Path("/elsewhere/syncar.sock")


async def test_an_ack_timeout_while_disconnected_says_so_and_the_event_is_not_sent_later(sock: Path) -> None:
    async with run_daemon(sock):
        client = Client(sock, backoff=(0.01, 0.05))
        await client.connect()
    try:
        await wait_for(lambda: not client.connected, what="the client to notice")
        with pytest.raises(AckTimeout, match=r"not connected to syncar .*; the client no longer holds it") as timed_out:
            await client.publish("p", "e", "given up", ack=True, timeout=0.2)
        assert not timed_out.value.queued
        await client.publish("p", "e", "held")
        async with run_daemon(sock) as daemon:
            await client.publish("p", "e", "after", ack=True)
            listener = await RawClient.connect(sock, {"resume": {"epoch": daemon.relay.epoch, "seq": 0}})
            assert [frame["data"] for frame in await listener.events(2)] == ["held", "after"]
            await listener.close()
    finally:
        await client.close()


async def test_a_gap_the_daemon_saw_is_told_to_on_gap_and_what_it_raises_stays_there(sock: Path) -> None:
    told: list[Gap] = []

    def on_gap(gap: Gap) -> None:
        told.append(gap)
        raise RuntimeError("an app's bug")

    there = SyncarCodec("there")
    async with run_daemon(sock) as daemon, Client(sock, on_gap=on_gap) as client:
        for seq in (1, 2, 9, 10):  # 3 to 8 never came
            await daemon.relay.on_message(Message(there.pack([outgoing(seq, event_id=str(seq))], seq)[0]))
        assert [(await client.next_event(timeout=5)).data for _ in range(4)] == [1, 2, 9, 10]
        assert told == [Gap("there", 6, 3, 8, there.run, "lost")]
        assert client.connected


async def test_trace_context_is_published_and_received(sock: Path) -> None:
    traceparent, tracestate = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "rojo=00f067aa0ba902b7"
    async with run_daemon(sock), Client(sock) as a, Client(sock) as b:
        await a.publish("messages", "created", 1, traceparent=traceparent, tracestate=tracestate, id="t", ack=True)
        await a.publish("messages", "created", 2, ack=True, id="u")
        traced, untraced = await b.next_event(timeout=5), await b.next_event(timeout=5)
        assert (traced.data, traced.traceparent, traced.tracestate) == (1, traceparent, tracestate)
        assert (untraced.data, untraced.traceparent, untraced.tracestate) == (2, None, None)


@pytest.mark.parametrize("client_id", ["a", "x" * 256, "é" * 256, "order-app-1", "", "x" * 257, 42, None, ["list"]])
def test_a_client_id_is_taken_as_the_daemon_takes_a_hellos(client_id: Any) -> None:
    """The client refuses at once the `client_id` the daemon would refuse in every `hello` (then the client would
    reconnect, be refused, reconnect...); the daemon's rule, not another one. None is no client_id: a random one."""
    from sidecar.errors import FrameError
    from sidecar.hello import parse_hello

    try:
        parse_hello({"type": "hello", "client_id": client_id}, max_patterns=1)
    except FrameError:
        with pytest.raises(ValueError, match="client_id must be a string of 1 to 256 characters"):
            Client(client_id=client_id)
    else:
        client = Client(client_id=client_id)
        if client_id is None:
            assert len(client.client_id) == 32 and Client().client_id != client.client_id
        else:
            assert client.client_id == client_id


async def test_a_client_id_given_is_the_apps_across_clients(sock: Path) -> None:
    """Two clients given one client_id are one app to the daemon: the same id is the same event on the bus."""
    async with run_daemon(sock, instance_id="one"), Client(sock, name="receiver") as receiver:
        for data in (1, 2):
            async with Client(sock, client_id="the-app") as publisher:
                assert publisher.client_id == "the-app"
                await publisher.publish("messages", "created", data, id="same", ack=True)
        # The daemon delivers a local publish to its apps each time; the receiver's (origin, id) memory drops the
        # second, and an event after it shows it was dropped, not late.
        async with Client(sock, client_id="another-app") as other:
            await other.publish("messages", "created", 3, id="same", ack=True)
        first, then = await receiver.next_event(timeout=5), await receiver.next_event(timeout=5)
        assert (first.data, then.data) == (1, 3)
        assert first.id.endswith(".same") and then.id.endswith(".same") and first.id != then.id
