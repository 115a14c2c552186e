"""A broker away at start: the daemon serves its apps without it and connects later; one that refuses us stops it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from backends.base import BackendUnavailable
from tests.brokers import BrokerServer, free_port, serve
from tests.brokers.nats import NatsServer
from tests.conftest import Connect
from tests.faults.proxy import TcpProxy
from tests.utils import SpawnedDaemon, http_get, publish_frame, run_daemon, wait_for

#: The broker URI of each broker on a given port, as the session's servers take it.
URIS = {
    "redis": "redis://127.0.0.1:{port}/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:{port}/",
    "nats": "nats://127.0.0.1:{port}",
}
BROKERS = [pytest.param(name, marks=getattr(pytest.mark, name), id=name) for name in URIS]
EVENTS = 50


@pytest.mark.parametrize("unreachable", ["closed port", "unknown name"])
@pytest.mark.parametrize("broker", list(URIS))
async def test_a_broker_that_cannot_be_reached_does_not_stop_the_start(
    broker: str, unreachable: str, sock: Path, connect: Connect
) -> None:
    """Nothing listens on the port, or the name does not resolve: the daemon starts, serves its apps locally and
    says the broker is down."""
    uri = URIS[broker].format(port=free_port())
    if unreachable == "unknown name":
        uri = uri.replace("127.0.0.1", "no-such-broker.invalid")
    # A short flush at the stop: the event published below stays in the outbox, with nowhere to go.
    daemon = SpawnedDaemon(sock, "--backend", uri, "--shutdown-timeout", "0.5")
    try:
        await daemon.ready()
        a, b = await connect(sock, {}), await connect(sock, {})
        assert a.welcome["broker"] == "down"
        await a.send(publish_frame(data="local", id="e1"))
        event = await b.frame_of("event")
        assert event["data"] == "local" and event["id"].endswith(".e1")  # in the publisher's scope
        # The socket is up, so the daemon is ready; the broker is not.
        assert await http_get(daemon.http_port, "/readyz") == (200, "ready\n")
        assert (await http_get(daemon.http_port, "/readyz/broker"))[0] == 503
        assert daemon.process.poll() is None
        log = daemon.log
        assert ": cannot connect to " in log and "; starting without the broker" in log, log
        if unreachable == "closed port":
            assert "connection refused; starting without the broker" in log, log
        assert "Traceback" not in log
    finally:
        assert await daemon.stop() == 0, daemon.log


async def test_require_broker_keeps_the_old_behaviour(sock: Path) -> None:
    port = free_port()
    daemon = SpawnedDaemon(sock, "--backend", f"redis://127.0.0.1:{port}/0", env={"SYNCAR_REQUIRE_BROKER": "true"})
    try:
        assert await daemon.exited() == 3
        assert (
            f"cannot start: redis: cannot connect to 127.0.0.1:{port}: connection refused (--require-broker is "
            "set)" in daemon.log
        ), daemon.log
        assert not sock.exists()
    finally:
        daemon.kill()


class NatsAuthServer(NatsServer):
    def command(self) -> list[str]:
        return [*super().command(), "--user", "alice", "--pass", "right-pass-123"]


@pytest.fixture
def refusing(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URI whose broker answers and refuses our wrong password."""
    broker = request.param
    if broker == "redis":
        server: BrokerServer = request.getfixturevalue("redis_server")
        user = f"u{uuid.uuid4().hex[:8]}"

        async def acl(change: Callable[[redis.asyncio.Redis], Awaitable[object]]) -> None:
            async with redis.asyncio.Redis.from_url(server.uri) as admin:
                await change(admin)

        def add(admin: redis.asyncio.Redis) -> Awaitable[bool]:  # ACL SETUSER user on >right-pass-123 +@all ~* &*
            return admin.acl_setuser(
                user, enabled=True, passwords="+right-pass-123", categories=["+@all"], keys=["*"], channels=["*"]
            )

        asyncio.run(acl(add))
        yield f"redis://{user}:wrong-pass-456@127.0.0.1:{server.port}/0"
        asyncio.run(acl(lambda admin: admin.acl_deluser(user)))
    elif broker == "rabbitmq":
        server = request.getfixturevalue("rabbitmq_server")
        yield f"amqp://guest:wrong-pass-456@127.0.0.1:{server.port}/"
    else:
        for server in serve(NatsAuthServer()):
            yield f"nats://alice:wrong-pass-456@127.0.0.1:{server.port}"


@pytest.mark.parametrize("refusing", BROKERS, indirect=True)
async def test_a_broker_that_refuses_us_stops_the_start_in_one_line(refusing: str, sock: Path) -> None:
    daemon = SpawnedDaemon(sock, "--backend", refusing)
    try:
        assert await daemon.exited(timeout=30) == 3
        log = daemon.log
        errors = [line for line in log.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "cannot start: " in errors[0] and ": cannot connect to 127.0.0.1:" in errors[0], log
        assert "wrong-pass-456" not in log and "Traceback" not in log
        assert "broker up" not in log and "broker down" not in log and "starting without" not in log, log
        assert not sock.exists()
    finally:
        daemon.kill()


@pytest.mark.parametrize("mode", ["broadcast", "durable"])
@pytest.mark.parametrize("broker", BROKERS)
async def test_publishes_made_before_the_broker_came_go_out_in_order(
    broker: str, mode: str, sock_dir: Path, connect: Connect, request: pytest.FixtureRequest
) -> None:
    """Started without its broker, a daemon holds its apps' publishes, then subscribes and sends them once it comes."""
    server: BrokerServer = request.getfixturevalue(f"{broker}_server")
    key = f"absent-{uuid.uuid4().hex[:8]}"
    port = free_port()  # where the broker will appear: nothing listens there yet
    common = {"key": key, "mode": mode, "reconnect_max_delay": 0.5}
    async with run_daemon(
        sock_dir / "a.sock", backend=URIS[broker].format(port=port), instance_id=f"{key}-a", **common
    ) as a:
        publisher, neighbour = await connect(a.listener.path, {}), await connect(a.listener.path, {})
        assert publisher.welcome["broker"] == neighbour.welcome["broker"] == "down"
        for n in range(EVENTS):
            await publisher.send(publish_frame(data=n, id=f"e{n}", ack=True))
        # The apps of this daemon get each other's events at once; the publishes wait in the outbox.
        assert [e["data"] for e in await neighbour.events(EVENTS)] == list(range(EVENTS))
        assert len(a.outbox) == EVENTS and not a.relay.broker_up

        # Another instance, on the broker, subscribed before a reaches it.
        async with run_daemon(sock_dir / "b.sock", backend=server.uri, instance_id=f"{key}-b", **common) as b:
            receiver = await connect(b.listener.path, {})
            proxy = await TcpProxy.start(server.port, port=port)  # the broker appears on a's port
            try:
                assert (await publisher.frame_of("status", timeout=30))["broker"] == "up"
                received = await receiver.events(EVENTS, timeout=30)
                assert [e["data"] for e in received] == list(range(EVENTS))
                assert {e["origin"] for e in received} == {f"{key}-a"}
                acks = [await publisher.frame_of("ack") for _ in range(EVENTS)]
                assert [ack["id"] for ack in acks] == [f"e{n}" for n in range(EVENTS)]
                await wait_for(lambda: len(a.outbox) == 0, what="a's outbox empty")
                # And a is subscribed: what b's apps publish now reaches a's.
                await receiver.send(publish_frame(data="from b"))
                assert (await neighbour.frame_of("event", timeout=30))["data"] == "from b"
            finally:
                await proxy.close()


@pytest.mark.redis
async def test_sentinels_all_down_is_a_degraded_start(sock: Path, connect: Connect) -> None:
    """redis+sentinel:// whose sentinels are all away: the same degraded start as one unreachable Redis."""
    uri = f"redis+sentinel://:pw-hunter2@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster?sentinel_password=s3"
    daemon = SpawnedDaemon(sock, "--backend", uri, "--shutdown-timeout", "0.5")
    try:
        await daemon.ready()
        app = await connect(sock, {})
        assert app.welcome["broker"] == "down"
        assert (await http_get(daemon.http_port, "/readyz/broker"))[0] == 503
        log = daemon.log
        assert "cannot connect to master 'mymaster' via sentinels 127.0.0.1:" in log, log
        assert "no sentinel answered with master 'mymaster' up; starting without the broker" in log, log
        assert "; starting without the broker" in log and "Traceback" not in log, log
        assert "pw-hunter2" not in log and "=s3" not in log, log
    finally:
        assert await daemon.stop() == 0, daemon.log


async def test_a_background_connect_ended_by_what_it_does_not_catch_stops_the_daemon_saying_why(
    sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started without its broker, a daemon connects in the background until it is reached; that task ended by what
    it does not catch (a CancelledError nobody asked for, as aiormq's from a start was, found by review) left a
    daemon that would never connect and never said why. It now stops as one whose outbox stopped does; the daemon's
    own stop still just cancels it."""
    uri = URIS["rabbitmq"].format(port=free_port())
    async with run_daemon(sock, backend=uri, reconnect_max_delay=0.2) as daemon:
        assert not daemon.relay.broker_up

        async def cut_short() -> None:
            raise asyncio.CancelledError

        monkeypatch.setattr(daemon.backend, "start", cut_short)
        await asyncio.wait_for(daemon.serve(), 10)  # it asked itself to stop
        assert daemon.failure is not None and "background connect" in daemon.failure, daemon.failure
        assert "CancelledError" in daemon.failure and daemon.unready_reason() == daemon.failure
    async with run_daemon(sock, backend=uri, reconnect_max_delay=0.2) as daemon:
        assert not daemon.relay.broker_up
    assert daemon.failure is None  # stopped while connecting in the background: cancelled, not failed


async def test_a_stop_ends_a_background_connect_whose_cancellation_a_library_swallowed(
    sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop cancels the background connect and waits for it 1 s. Where the broker library swallows that
    cancellation (as asyncio.wait_for may on 3.11, the outbox's case), the connect went on trying against the closed
    backend, BackendClosed taken for a broker still away, after the daemon said "stopped" (found by review). It now
    ends there, as the outbox does."""
    uri = URIS["rabbitmq"].format(port=free_port())
    async with run_daemon(sock, backend=uri, reconnect_max_delay=0.2) as daemon:
        assert not daemon.relay.broker_up
        real_start = daemon.backend.start
        handshaking = asyncio.Event()

        async def swallowing_start() -> None:  # a handshake under way at the stop, in a library that swallows it
            handshaking.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            monkeypatch.setattr(daemon.backend, "start", real_start)  # the real one from now on
            raise BackendUnavailable("amqp: cannot connect (the handshake was cut)")

        monkeypatch.setattr(daemon.backend, "start", swallowing_start)
        await asyncio.wait_for(handshaking.wait(), 10)
        (connecting,) = [task for task in asyncio.all_tasks() if task.get_name() == "syncar-connect"]
    try:
        done, _ = await asyncio.wait({connecting}, timeout=5)
        assert connecting in done, "the background connect still runs 5 s after the daemon stopped"
        assert not connecting.cancelled() and connecting.exception() is None
        assert daemon.failure is None
    finally:
        connecting.cancel()
