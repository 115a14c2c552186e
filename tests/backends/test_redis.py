"""The Redis backend against a real redis-server: delivery, order, subscriptions, lifecycle, faults, TLS."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import Any

import pytest
import redis.asyncio

from backends.base import (
    OWN_WRITE_BYTES,
    BackendConfig,
    BackendError,
    BackendRefused,
    BackendState,
    BackendUnavailable,
    MessageTooLarge,
    PublishTimeout,
)
from backends.redis import RedisBackend
from backends.redis_internals import Session
from tests.backends.support import Inbox, Started, tasks_started
from tests.brokers import free_port, serve
from tests.brokers.redis import RedisServer, RedisTlsServer
from tests.utils import eventually, wait_for

pytestmark = pytest.mark.redis

Factory = Callable[..., Awaitable[RedisBackend]]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    yield from serve(RedisServer())


@pytest.fixture
def backend(server: RedisServer, started: Started) -> Factory:
    """`await backend(uri=..., on_state=...)`: a started RedisBackend, closed when the test ends."""

    async def factory(
        uri: str | None = None, on_state: Callable[[BackendState], None] | None = None, connect_timeout: float = 2.0
    ) -> RedisBackend:
        config = BackendConfig(uri or server.uri, f"test-{len(started)}", connect_timeout)
        return await started(RedisBackend(config, on_state=on_state))

    return factory


async def test_last_unsubscribe_leaves_the_channel_and_it_can_be_joined_again(backend: Factory, topic: str) -> None:
    a, b = await backend(), await backend()
    probe = redis.asyncio.Redis.from_url(b.config.uri)
    try:
        first = Inbox()
        subscription = await b.subscribe(topic, first)
        assert (await probe.pubsub_numsub(topic)) == [(topic.encode(), 1)]
        await subscription.unsubscribe()
        await _until_numsub(probe, topic, 0)
        again = Inbox()
        await b.subscribe(topic, again)
        await a.publish(topic, [b"back"])
        assert await again.wait(1) == [b"back"]
        assert first.bodies == []
    finally:
        await probe.aclose()


async def test_a_large_body_is_written_as_it_is_between_the_others(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our PUBLISH commands, not redis-py's (hiredis copies every body into its command, and the transport's join
    copies it again): a body of OWN_WRITE_BYTES or more is written by itself, the very object the codec made, and
    the bodies around it arrive whole and in order."""
    a, b = await backend(), await backend()
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    large = [b"%d" % n * OWN_WRITE_BYTES for n in (1, 2)]
    written: list[bytes] = []
    original = Session.publish

    def publish(
        session: Session, writes: Sequence[bytes], channel: bytes, bodies: Sequence[bytes]
    ) -> asyncio.Future[list[Any]]:
        written.extend(writes)
        return original(session, writes, channel, bodies)

    monkeypatch.setattr(Session, "publish", publish)
    bodies = [b"before", large[0], b"between %d", large[1], b"after"]
    await a.publish(topic, bodies)
    assert await inbox.wait(5) == bodies
    assert [command for command in written if len(command) >= OWN_WRITE_BYTES] == large
    assert all(any(command is body for command in written) for body in large)


async def test_the_subscribed_connection_publishes_so_a_reply_and_its_own_message_are_one_read(
    backend: Factory, server: RedisServer, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis writes a message to its own publisher just before the PUBLISH's reply, in one write: published on the
    subscribed connection (RESP3), both are one read, one wake-up of the publishing daemon. Over a connection of its
    own they came on two sockets: the publishing daemon woke ~2.4 times per event at 100 events/s, 1.75 since
    (docs/benchmarks/history.md, "Redis: one connection")."""
    name = f"one-{uuid.uuid4().hex[:8]}"
    a = await backend(uri=f"{server.uri}?client_name={name}&health_check_interval=30")
    inbox = Inbox()
    await a.subscribe(topic, inbox)
    reads = [0]
    data_received = Session.data_received

    def counted(session: Session, data: bytes) -> None:
        reads[0] += 1
        data_received(session, data)

    monkeypatch.setattr(Session, "data_received", counted)
    for n in range(20):
        await a.publish(topic, [b"%d" % n])
        await inbox.wait(n + 1)  # its own message: Redis cannot leave a subscriber's own publishes out
    assert reads[0] == 20
    probe = redis.asyncio.Redis.from_url(server.uri)
    try:
        publishing = [c for c in await probe.client_list() if c["name"] == name and c["cmd"] == "publish"]
    finally:
        await probe.aclose()
    assert [(c["sub"], c["resp"]) for c in publishing] == [("1", "3")]  # before: a connection of its own, sub=0


async def test_a_publish_given_up_on_leaves_the_connection_in_step(
    server: RedisServer, topic: str, started: Started
) -> None:
    """A publish that times out stays in the queue of commands awaiting a reply: its reply, when it comes, is not
    taken for the next one's, and the connection is kept (the watchdog, not the publish, judges the broker)."""
    states: list[BackendState] = []
    config = BackendConfig(f"{server.uri}?socket_timeout=0.3&health_check_interval=30", "test-given-up", 2.0)
    a = await started(RedisBackend(config, on_state=states.append))
    inbox = Inbox()
    await a.subscribe(topic, inbox)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(PublishTimeout):
            await a.publish(topic, [b"late 1", b"late 2"])
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    await a.publish(topic, [b"after"])
    assert await inbox.wait(3) == [b"late 1", b"late 2", b"after"]
    assert states == [BackendState.CONNECTED]


class _RedisWithoutResp3(RedisServer):
    """A Redis as one before 6.0 answers HELLO."""

    def command(self) -> list[str]:
        return [*super().command(), "--rename-command", "HELLO", ""]


@pytest.fixture
def without_resp3() -> Iterator[RedisServer]:
    yield from serve(_RedisWithoutResp3())


async def test_a_redis_without_resp3_is_refused_with_what_it_needs(
    without_resp3: RedisServer, started: Started
) -> None:
    """Broadcast mode speaks RESP3, to publish on its subscribed connection: a Redis before 6.0 knows no HELLO."""
    with pytest.raises(BackendRefused, match=r"unknown command 'HELLO'.*\(broadcast mode needs Redis 6.0 or later\)$"):
        await started(RedisBackend(BackendConfig(without_resp3.uri, "test-no-resp3", 2.0)))


async def _until_numsub(probe: redis.asyncio.Redis, topic: str, count: int) -> None:
    """Poll Redis until `topic` has `count` subscribers."""
    for _ in range(500):
        if (await probe.pubsub_numsub(topic)) == [(topic.encode(), count)]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{topic} never had {count} subscribers")


async def test_message_size_limit(backend: Factory, server: RedisServer, topic: str) -> None:
    a = await backend()
    assert a.max_message_bytes == 8 * 1024 * 1024
    too_large = r"^redis: message of 8388609 bytes is over max_message_bytes of 8388608 bytes$"
    with pytest.raises(MessageTooLarge, match=too_large):
        await a.publish(topic, [b"x" * (8 * 1024 * 1024 + 1)])
    # Above a quarter of what Redis lets a subscriber's unsent replies reach (32 MB by default), a message could cut
    # every subscriber off: the server's limit wins until it is raised.
    assert (await backend(f"{a.config.uri}?max_message_bytes=16777216")).max_message_bytes == 8 * 1024 * 1024
    probe = redis.asyncio.from_url(server.uri)
    await probe.config_set("client-output-buffer-limit", "pubsub 67108864 0 0")
    try:
        assert (await backend(f"{a.config.uri}?max_message_bytes=16777216")).max_message_bytes == 16 * 1024 * 1024
    finally:
        await probe.config_set("client-output-buffer-limit", "pubsub 33554432 8388608 60")
        await probe.aclose()


async def test_wrong_password_is_a_clean_error_without_the_password(server: RedisServer, topic: str) -> None:
    admin = redis.asyncio.Redis.from_url(server.uri)
    user = f"u{uuid.uuid4().hex[:8]}"
    await admin.acl_setuser(
        user, enabled=True, passwords=["+right-pass-123"], commands=["+@all"], keys=["*"], channels=["*"]
    )
    try:
        wrong = RedisBackend(BackendConfig(f"redis://{user}:wrong-pass-456@127.0.0.1:{server.port}/0", "x"))
        with pytest.raises(BackendRefused) as caught:
            await wrong.start()
        message = str(caught.value)
        assert message.startswith(f"redis: cannot connect to 127.0.0.1:{server.port}: ")
        assert "wrong-pass-456" not in message and "\n" not in message
        assert "password" in message, message
        await wrong.close()
        right = RedisBackend(BackendConfig(f"redis://{user}:right-pass-123@127.0.0.1:{server.port}/0", "x"))
        async with right:
            inbox = Inbox()
            await right.subscribe(topic, inbox)
            await right.publish(topic, [b"authenticated"])
            assert await inbox.wait(1) == [b"authenticated"]
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()


async def test_a_subscription_refused_by_an_acl(server: RedisServer, topic: str) -> None:
    admin = redis.asyncio.Redis.from_url(server.uri)
    user = f"u{uuid.uuid4().hex[:8]}"
    await admin.acl_setuser(
        user,
        enabled=True,
        passwords=["+pw-1234"],
        channels=[f"{topic}-ok"],
        commands=["-@all", "+publish", "+subscribe", "+unsubscribe", "+ping"],
    )
    states: list[BackendState] = []
    limited = RedisBackend(
        BackendConfig(f"redis://{user}:pw-1234@127.0.0.1:{server.port}/0", "x", 5.0), on_state=states.append
    )
    try:
        await limited.start()
        inbox = Inbox()
        await limited.subscribe(f"{topic}-ok", inbox)
        started = time.monotonic()
        with pytest.raises(
            BackendError,
            match=r"^redis: subscription to '.*-no' refused: this user has no "
            r"permissions to access one of the channels",
        ):
            await limited.subscribe(f"{topic}-no", Inbox())
        assert time.monotonic() - started < 1.0, "a refusal is an answer, not a timeout"
        with pytest.raises(BackendError, match=r"^redis: publish refused: ") as caught:
            await limited.publish(f"{topic}-no", [b"x"])
        assert not isinstance(caught.value, BackendUnavailable)
        # A pipeline refused at its first command leaves the others' replies unread: none is taken for the answer
        # to the next publish.
        with pytest.raises(BackendError, match=r"^redis: publish refused: "):
            await limited.publish(f"{topic}-no", [b"x", b"y", b"z"])
        # The connection survived the refusals; the allowed channel still works.
        await limited.publish(f"{topic}-ok", [b"fine"])
        assert await inbox.wait(1) == [b"fine"]
        assert states == [BackendState.CONNECTED]
    finally:
        await limited.close()
        await admin.acl_deluser(user)
        await admin.aclose()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?tls=1", r"^redis: unknown URI option 'tls'; known: "),
        ("?ssl_ca_certs=/ca.pem", r"^redis: unknown URI option 'ssl_ca_certs' \(TLS options need rediss://\)"),
        ("?socket_timeout=soon", r"^redis: invalid URI: invalid value for 'socket_timeout'"),
        ("?health_check_interval=0", r"^redis: invalid URI: timeouts and health_check_interval must be above 0, "),
        ("?max_message_bytes=10", r"^redis: invalid URI: .* max_message_bytes at least 1024$"),
    ],
)
async def test_bad_uri_options_are_refused_at_start(query: str, expected: str) -> None:
    bad = RedisBackend(BackendConfig(f"redis://:pw-secret@127.0.0.1:{free_port()}/0{query}", "x"))
    with pytest.raises(BackendError, match=expected) as caught:
        await bad.start()
    assert not isinstance(caught.value, BackendUnavailable)
    assert "pw-secret" not in str(caught.value)
    await bad.close()


async def test_a_long_outage_is_logged_once_and_the_return_still_noticed_at_once(
    server: RedisServer, backend: Factory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What every backend does across a restart is tests/backends/test_contract.py's; this is Redis's back-off."""
    states: list[BackendState] = []
    b = await backend(on_state=states.append)
    await b.subscribe(topic, Inbox())
    server.kill()
    # Stay down long enough for the back-off to grow: the return is still noticed within 2 s.
    await wait_for(lambda: b.outage.failures >= 8, 10.0, "8 failed reconnect attempts")
    # Logged once, not once per attempt: the first attempts are held back for the summary.
    assert _failed_reconnects(caplog) == 0
    server.start()
    back = time.monotonic()
    await wait_for(lambda: states[-1:] == [BackendState.CONNECTED], 5.0, "CONNECTED again")
    assert time.monotonic() - back < 2.0, "must recover within 2 s of the broker's return"


def _failed_reconnects(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for record in caplog.records if record.getMessage().startswith("redis: reconnect to "))


async def test_a_reconnect_that_fails_with_uvloops_runtime_error_is_tried_again(
    server: RedisServer, backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under uvloop, a connection reset in the middle of redis-py's handshake surfaced as RuntimeError ("unable to
    perform operation on <TCPTransport closed=True>"), not a connection error: the reconnect loop did not expect it
    and ended, and the daemon stayed up, never connected again (fault case 4, Redis: `B` got nothing after the cut).
    A reset's timing cannot be had on demand, so the first reconnect attempt is made to raise it."""
    states: list[BackendState] = []
    b = await backend(on_state=states.append)
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    connect = redis.asyncio.connection.AbstractConnection.connect
    raised: list[str] = []

    async def reset_in_the_handshake(self: redis.asyncio.connection.AbstractConnection) -> None:
        if not raised and not self.is_connected:  # redis-py calls connect() on a connected one too
            raised.append("once")
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
        await connect(self)  # type: ignore[no-untyped-call]  # unannotated in redis-py

    probe = redis.asyncio.Redis.from_url(server.uri)
    try:
        await probe.ping()  # connected before the patch
        monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "connect", reset_in_the_handshake)
        await probe.client_kill_filter(_type="pubsub")  # the subscribed connection: the backend reconnects it
    finally:
        await probe.aclose()
    await wait_for(lambda: BackendState.RECONNECTING in states, 5.0, "RECONNECTING")
    await wait_for(lambda: states[-1:] == [BackendState.CONNECTED], 5.0, "CONNECTED again")
    assert raised == ["once"], "the reconnect never met the RuntimeError"
    a = await backend()
    await a.publish(topic, [b"after the reset"])
    assert await inbox.wait(1) == [b"after the reset"]


async def test_a_hung_broker_is_noticed_while_idle(server: RedisServer, backend: Factory, topic: str) -> None:
    states: list[BackendState] = []
    b = await backend(on_state=states.append)
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)  # the sockets stay open: only the health check can tell
    try:
        stopped = time.monotonic()
        await wait_for(lambda: BackendState.RECONNECTING in states, 5.0, "RECONNECTING")
        assert time.monotonic() - stopped < 2.5, "a silent broker must be noticed within ~2 s"
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_for(lambda: states[-1:] == [BackendState.CONNECTED], 10.0, "CONNECTED again")
    a = await backend()
    await a.publish(topic, [b"resumed"])
    assert await inbox.wait(1) == [b"resumed"]


async def test_a_publish_to_a_hung_broker_times_out_after_socket_timeout(
    server: RedisServer, topic: str, started: Started
) -> None:
    config = BackendConfig(f"{server.uri}?socket_timeout=0.5", "test-hung-publish", 2.0)
    a = await started(RedisBackend(config))
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(PublishTimeout, match=r"^redis: publish timed out after 0.5s"):
            await a.publish(topic, [b"lost in a hung broker"])
        assert time.monotonic() - began < 2.5
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_broadcast_publish_starts_no_task(backend: Factory, topic: str) -> None:
    """A Task per PUBLISH (redis-py's asyncio.wait_for when it has a socket_timeout) was a seventh of a publishing
    daemon's CPU at 1,000 events/s; the publish is bounded by one timeout of its own instead."""
    a, b = await backend(), await backend()
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    with tasks_started() as created:
        for n in range(50):
            await a.publish(topic, [b"%d" % n])
        await a.publish(topic, [b"batch 1", b"batch 2"])
    assert created == []
    assert len(await inbox.wait(52)) == 52


async def test_publishes_one_after_another_set_one_timer_not_one_each(backend: Factory, topic: str) -> None:
    """Each publish was bounded by an asyncio.timeout: a timer made and closed per event (under uvloop also a turn
    of the loop with a zero timeout). One timer, moved on only when it fires, bounds them all now."""
    a, b = await backend(), await backend()
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    await a.publish(topic, [b"0"])  # the first one arms the one timer of the bound
    loop = asyncio.get_running_loop()
    timers: list[str] = []
    call_at = loop.call_at

    publishing = asyncio.current_task()

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if asyncio.current_task() is publishing:  # not the readers' watchdogs, asleep between their checks
            timers.append(getattr(callback, "__qualname__", repr(callback)))
        return call_at(when, callback, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "call_at", counting)
        for n in range(1, 51):
            await a.publish(topic, [b"%d" % n])
    assert len(timers) <= 1, timers  # before: 50
    assert len(await inbox.wait(51)) == 51


async def test_a_broadcast_publish_takes_no_connection_from_the_pool(
    backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the pool (redis-py's execute_command: its lock, checks, retry wrapper and observability hooks) a
    PUBLISH cost about 40 µs more CPU, a quarter of a publishing daemon's at 1,000 events/s; it goes over a connection
    of its own instead, in order, pipelined for a batch."""
    a, b = await backend(), await backend()
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    taken: list[object] = []
    pool_get = redis.asyncio.ConnectionPool.get_connection

    async def counted(pool: redis.asyncio.ConnectionPool, *args: Any, **kwargs: Any) -> Any:
        taken.append(pool)
        return await pool_get(pool, *args, **kwargs)  # type: ignore[no-untyped-call]  # unannotated in redis-py

    monkeypatch.setattr(redis.asyncio.ConnectionPool, "get_connection", counted)
    for n in range(20):
        await a.publish(topic, [b"%d" % n])
    await a.publish(topic, [b"batch 1", b"batch 2", b"batch 3"])
    assert taken == []
    assert await inbox.wait(23) == [b"%d" % n for n in range(20)] + [
        b"batch 1",
        b"batch 2",
        b"batch 3",
    ]


@pytest.fixture(scope="module")
def tls_server() -> Iterator[RedisTlsServer]:
    yield from serve(RedisTlsServer())


async def test_tls_refuses_an_unknown_ca(tls_server: RedisTlsServer) -> None:
    untrusted = RedisBackend(BackendConfig(f"rediss://127.0.0.1:{tls_server.port}/0", "x", 2.0))
    with pytest.raises(
        BackendRefused,
        match=r"^redis: cannot connect to 127\.0\.0\.1:\d+: tls: certificate "
        r"verify failed: self.signed certificate in certificate chain$",
    ):
        await untrusted.start()
    await untrusted.close()


async def test_subscriptions_changed_during_an_outage(server: RedisServer, backend: Factory, topic: str) -> None:
    states: list[BackendState] = []
    b = await backend(on_state=states.append, connect_timeout=5.0)
    left = await b.subscribe(f"{topic}-left", Inbox())
    server.kill()
    await wait_for(lambda: BackendState.RECONNECTING in states, 3.0, "RECONNECTING")
    joined = Inbox()
    joining = asyncio.create_task(b.subscribe(f"{topic}-joined", joined))
    await left.unsubscribe()
    server.start()
    await asyncio.wait_for(joining, 5.0)  # returns once Redis confirmed it, after the reconnect
    assert states[-1] is BackendState.CONNECTED
    a = await backend()
    await a.publish(f"{topic}-joined", [b"welcome"])
    assert await joined.wait(1) == [b"welcome"]
    probe = redis.asyncio.Redis.from_url(server.uri)
    try:
        await _until_numsub(probe, f"{topic}-left", 0)
    finally:
        await probe.aclose()


async def test_large_message(backend: Factory, topic: str) -> None:
    a, b = await backend(), await backend()
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    body = bytes(range(256)) * (4 * 1024 * 4)  # 4 MiB
    await a.publish(topic, [body, b"next"])
    assert await inbox.wait(2) == [body, b"next"]


async def test_tls_file_that_cannot_be_read_is_named(tls_server: RedisTlsServer) -> None:
    missing = tls_server.dir / "missing-ca.pem"
    broken = RedisBackend(BackendConfig(f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={missing}", "x"))
    with pytest.raises(BackendError, match=rf"^redis: invalid URI: ssl_ca_certs: cannot read {missing}$"):
        await broken.start()
    await broken.close()


async def test_a_pong_read_in_the_turn_that_sent_the_ping_proves_the_connection(
    server: RedisServer, backend: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop reads its clock once per turn of the loop: a pong read in the turn that sent the ping has the ping's
    time. A clock in steps of 0.1 s makes that the rule rather than a chance of a busy machine (before: the
    connection was dropped after each first ping, and a broadcast lost what came meanwhile)."""
    loop = asyncio.get_running_loop()
    clock = loop.time
    monkeypatch.setattr(loop, "time", lambda: math.floor(clock() * 10) / 10)
    states: list[BackendState] = []
    b = await backend(uri=f"{server.uri}?health_check_interval=0.4", on_state=states.append)
    await b.subscribe(topic, Inbox())
    probe = redis.asyncio.Redis.from_url(server.uri)
    try:
        before = await _pings(probe)
        await eventually(partial(_pinged, probe, before + 10), 20, "ten pings of the watchdog")
    finally:
        await probe.aclose()
    assert states == [BackendState.CONNECTED], "an answered ping was taken for an unanswered one"


async def _pings(probe: redis.asyncio.Redis) -> int:
    """PINGs the server has answered so far, from anyone."""
    calls: int = (await probe.info("commandstats")).get("cmdstat_ping", {}).get("calls", 0)
    return calls


async def _pinged(probe: redis.asyncio.Redis, count: int) -> bool:
    return await _pings(probe) >= count


async def test_a_busy_loop_is_not_taken_for_a_silent_broker(server: RedisServer, backend: Factory, topic: str) -> None:
    """While the loop is held up (busy, or a process starved of CPU), the watchdog's ticks come late: it must not take
    a ping answered in the meantime for one unanswered (before: dropped the connection every few seconds)."""
    states: list[BackendState] = []
    b = await backend(on_state=states.append)
    inbox = Inbox()
    await b.subscribe(topic, inbox)
    a = await backend()
    probe = redis.asyncio.Redis.from_url(server.uri)
    body = os.urandom(400_000)
    loop, stop = asyncio.get_running_loop(), asyncio.Event()

    def hold_up_the_loop() -> None:
        time.sleep(0.4)  # the fault: the whole loop stalls for a while, turn after turn
        if not stop.is_set():
            loop.call_soon(hold_up_the_loop)

    loop.call_soon(hold_up_the_loop)
    try:
        for sent in range(1, 4):
            before = await _pings(probe)
            await eventually(partial(_pinged, probe, before + 1), 10, "the watchdog to ping an idle connection")
            await a.publish(topic, [body])  # and a message that takes a few turns to read
            await inbox.wait(sent, timeout=30)
    finally:
        stop.set()
        await probe.aclose()
    assert states == [BackendState.CONNECTED], "a held-up loop was taken for a lost connection"
    assert inbox.bodies == [body] * 3
