"""Broadcast mode's connection read as its bytes arrive (backends/redis_internals.py): what it relies on
in redis-py, and how messages reach the handlers that way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser
from redis.asyncio.connection import Connection

from backends.base import BackendConfig, BackendState, Message
from backends.redis import RedisBackend
from tests.backends.support import Inbox, Started
from tests.brokers import BrokerServer
from tests.utils import wait_for

pytestmark = pytest.mark.redis

Factory = Callable[..., Awaitable[RedisBackend]]


@pytest.fixture
def backend(redis_server: BrokerServer, started: Started) -> Factory:
    async def factory(query: str = "", on_state: Callable[[BackendState], None] | None = None) -> RedisBackend:
        config = BackendConfig(redis_server.uri + query, f"test-{len(started)}", 2.0)
        return await started(RedisBackend(config, on_state=on_state))

    return factory


async def test_what_it_relies_on_in_redis_py(redis_server: BrokerServer) -> None:
    """A connected Connection keeps its StreamWriter as `_writer`, whose transport can change protocols; error
    replies are made into redis-py's exceptions by `BaseParser.parse_error`."""
    conn = Connection(host="127.0.0.1", port=redis_server.port)
    await conn.connect()  # type: ignore[no-untyped-call]
    try:
        writer = conn._writer  # noqa: SLF001  # what redis_internals.Session reads
        assert isinstance(writer, asyncio.StreamWriter)
        transport = writer.transport
        assert callable(transport.set_protocol) and transport.get_protocol() is not None
    finally:
        await conn.disconnect()
    refused = BaseParser.parse_error("NOPERM this user has no permissions")  # type: ignore[no-untyped-call]  # unannotated in redis-py
    assert isinstance(refused, redis_errors.NoPermissionError) and str(refused) == "this user has no permissions"
    loading = BaseParser.parse_error("LOADING Redis is loading")  # type: ignore[no-untyped-call]  # unannotated in redis-py
    assert isinstance(loading, redis_errors.ConnectionError)


async def test_a_message_is_handed_over_in_the_callback_that_read_it(backend: Factory, topic: str) -> None:
    """No Task between the socket and the handler: through redis-py's read_response() every message woke the
    reader's Task (a turn of the loop more, and its StreamReader), 54 µs of CPU per message at 1,000/s against
    23-36 this way (docs/benchmarks/history.md, "Redis at 100 and 1,000 events/s")."""
    a, b = await backend(), await backend()
    tasks: list[asyncio.Task[Any] | None] = []

    async def handler(message: Message) -> None:
        tasks.append(asyncio.current_task())

    await b.subscribe(topic, handler)
    await a.publish(topic, [b"one"])
    await a.publish(topic, [b"two", b"three"])
    await wait_for(lambda: len(tasks) == 3, what="three messages")
    assert tasks == [None, None, None]  # before: the reader's Task, three times


async def test_a_handler_that_waits_holds_the_next_messages_back(backend: Factory, topic: str) -> None:
    """One message at a time and in order, also when a handler waits (it is finished in a Task, with the reading
    paused); the watchdog does not take the pause for a silent broker; a second subscription to the channel gets
    each message after the first."""
    states: list[BackendState] = []
    a, b = await backend(), await backend("?health_check_interval=0.2", states.append)
    first_may_finish, got, running = asyncio.Event(), [], [0]

    async def waits_on_the_first(message: Message) -> None:
        running[0] += 1
        assert running[0] == 1, "two messages handled at once"
        if message.body == b"1":
            await first_may_finish.wait()
        got.append(message.body)
        running[0] -= 1

    after = Inbox()
    await b.subscribe(topic, waits_on_the_first)
    await b.subscribe(topic, after)
    await a.publish(topic, [b"1", b"2", b"3"])
    await wait_for(lambda: running[0] == 1, what="the first message's handler to wait")
    await asyncio.sleep(0.6)  # the handler's wait: three health-check intervals
    assert got == [] and after.bodies == []
    first_may_finish.set()
    await after.wait(3)
    assert got == after.bodies == [b"1", b"2", b"3"]
    await a.publish(topic, [b"4"])
    assert await after.wait(4) == [b"1", b"2", b"3", b"4"]
    assert states == [BackendState.CONNECTED], "a handler's wait was taken for a silent broker"


async def test_close_ends_a_handler_that_waits(backend: Factory, topic: str) -> None:
    a, b = await backend(), await backend()
    waiting, ended = asyncio.Event(), asyncio.Event()

    async def never_done(message: Message) -> None:
        waiting.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    await b.subscribe(topic, never_done)
    await a.publish(topic, [b"stuck"])
    async with asyncio.timeout(5):
        await waiting.wait()
        await b.close()
    assert ended.is_set() and b.state is BackendState.CLOSED


async def test_a_handler_that_raises_loses_its_message_not_the_next(backend: Factory, topic: str) -> None:
    a, b = await backend(), await backend()
    failing, inbox = Inbox(fail={b"bad"}), Inbox()

    async def waits_then_fails(message: Message) -> None:
        await asyncio.sleep(0)
        if message.body == b"bad too":
            raise RuntimeError("refused after a wait")
        await inbox(message)

    await b.subscribe(topic, failing)
    other = f"{topic}-2"
    await b.subscribe(other, waits_then_fails)
    await a.publish(topic, [b"bad", b"good"])
    await a.publish(other, [b"bad too", b"fine"])
    assert await failing.wait(1) == [b"good"]
    assert await inbox.wait(1) == [b"fine"]


async def test_a_publish_reads_its_replies_as_they_arrive(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No redis-py read per PUBLISH: `send_packed_command()` and `read_response()` (its StreamWriter's drain, its
    StreamReader's wake-up of the waiting Task) are left for a write to the transport and the reply read as it
    arrives (`RedisBackend.publish()` at 100 a second: a median 253 µs of CPU against 234, docs/benchmarks/history.md,
    "Redis at 100 and 1,000 events/s")."""
    a, b = await backend(), await backend()
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    await a.publish(topic, [b"0"])
    reads: list[object] = []
    read_response = Connection.read_response

    async def counted(conn: Connection, *args: Any, **kwargs: Any) -> Any:
        reads.append(conn)
        return await read_response(conn, *args, **kwargs)

    monkeypatch.setattr(Connection, "read_response", counted)
    for n in range(1, 21):
        await a.publish(topic, [b"%d" % n])
    await a.publish(topic, [b"21", b"22", b"23"])
    assert reads == []  # before: one per PUBLISH, 23
    assert await inbox.wait(24) == [b"%d" % n for n in range(24)]


async def test_our_own_large_message_comes_back_as_the_body_we_sent(backend: Factory, topic: str) -> None:
    """A daemon hears its own batches (Redis has no way to leave them out). A large one is read by comparing it with
    the body sent, not by hiredis, whose buffer grew to hold it and which copied it once more: the same bytes, the
    object we published (1.8 MiB off the publishing daemon's peak at full speed, docs/benchmarks/history.md, "Redis peak
    memory at full speed"). Where it
    starts a read, as a daemon's own batches do: the next is written once the last one was answered."""
    a, b = await backend(), await backend()
    heard, other = Inbox(), Inbox()
    await a.subscribe(topic, heard)
    await b.subscribe(topic, other)
    large = bytes(range(256)) * 1024  # 256 KiB, over ECHO_COMPARED_BYTES
    await a.publish(topic, [large, b"small"])
    await b.publish(topic, [large[:-1] + b"!"])  # as long as ours, not ours
    await heard.wait(3)  # read to its end before ours comes
    await a.publish(topic, [large])
    assert await heard.wait(4) == [large, b"small", large[:-1] + b"!", large]
    assert heard.bodies[0] is large and heard.bodies[3] is large
    assert heard.bodies[2] is not large
    assert await other.wait(4) == heard.bodies


async def test_a_message_that_starts_as_our_own_but_is_not_is_read_as_it_came(backend: Factory, topic: str) -> None:
    """Another instance's message as long as ours, with the same header and first bytes, arriving where ours was
    awaited: read as ours until the bytes differ, then handed to hiredis as they came, and ours after it."""
    a = await backend()
    heard = Inbox()
    await a.subscribe(topic, heard)
    ours, theirs = b"x" * 100_000 + b"ours", b"x" * 100_000 + b"them"
    channel = topic.encode()
    session = a._session  # noqa: SLF001  # the connection as redis_internals reads it
    assert session is not None
    publish = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n" % (len(channel), channel, len(ours))
    replied = session.publish([publish, ours, b"\r\n"], channel, [ours])
    # Before Redis's answer is read: their message, in three reads, the last one with a reply of ours after it.
    push = b">3\r\n$7\r\nmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(channel), channel, len(theirs), theirs)
    for start, end in ((0, 60_000), (60_000, len(push) - 3), (len(push) - 3, len(push))):
        session.data_received(push[start:end])
    assert heard.bodies == [theirs]
    assert await asyncio.wait_for(replied, 5) == [1]
    assert await heard.wait(2) == [theirs, ours]
    assert heard.bodies[1] is ours
