"""A second `syncar run` given the socket or the HTTP port of a live one exits 3 before it says anything to the broker.

Found by the new-user review: it used to connect, subscribe and announce first, and only then find the socket in use.
On Redis the live daemon then warned that another daemon announced its instance id; in NATS durable mode with the
same --instance-id its consumer was deleted under it; in RabbitMQ durable mode the second consumer on its queue could
take its messages. The socket and the port are now bound first, and served once the broker is connected.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
import redis.asyncio

from backends.nats_jetstream import jetstream_name
from sidecar.config import Settings
from sidecar.daemon import Daemon
from tests.brokers import BrokerServer, free_port
from tests.utils import RawClient, SpawnedDaemon, wait_for


@pytest.fixture
async def admin(redis_server: BrokerServer) -> AsyncIterator[redis.asyncio.Redis]:
    """One connection to the test's Redis, open before the daemons start: counting connections adds none."""
    async with redis.asyncio.Redis.from_url(redis_server.uri, single_connection_client=True) as client:
        yield client


async def connections(admin: redis.asyncio.Redis) -> int:
    """Every connection the Redis server has accepted since it started."""
    return int((await admin.info("stats"))["total_connections_received"])


@pytest.mark.redis
async def test_a_second_daemon_on_a_socket_in_use_exits_3_without_a_word_to_the_broker(
    sock: Path, redis_server: BrokerServer, admin: redis.asyncio.Redis
) -> None:
    key, instance = f"claim-{uuid.uuid4().hex[:8]}", f"claim-{uuid.uuid4().hex[:8]}"
    common = ("--backend", redis_server.uri, "--key", key)
    first = SpawnedDaemon(sock, *common, "--instance-id", instance, name="first")
    try:
        await first.ready()
        before = await connections(admin)
        # Given the same socket (its default instance id, made from the socket path), then the live one's id too.
        for n, args in enumerate([(), ("--instance-id", instance)]):
            second = SpawnedDaemon(sock, *common, *args, name=f"second{n}")
            try:
                assert await second.exited() == 3, second.log
                assert "in use by another running syncar" in second.log, second.log
                assert "Traceback" not in second.log
            finally:
                second.kill()
        # Before the fix each second daemon connected (2 connections), subscribed and announced, the second one with
        # the live one's instance id, which the live one then warned about.
        assert await connections(admin) == before
        client = await RawClient.connect(sock, {})  # the live one is unharmed, its socket still there
        assert client.welcome["broker"] == "up"
        await client.close()
        assert "announces this daemon's instance id" not in first.log, first.log
        assert await first.stop() == 0
    finally:
        first.kill()


@pytest.mark.redis
async def test_a_second_daemon_on_an_http_port_in_use_exits_3_without_a_word_to_the_broker(
    sock_dir: Path, redis_server: BrokerServer, admin: redis.asyncio.Redis
) -> None:
    first = SpawnedDaemon(sock_dir / "first.sock", "--backend", redis_server.uri, name="first")
    try:
        await first.ready()
        before = await connections(admin)
        port = first.http_port
        own = sock_dir / "second.sock"
        second = SpawnedDaemon(own, "--backend", redis_server.uri, "--http", f"127.0.0.1:{port}", name="second")
        try:
            assert await second.exited() == 3, second.log
            assert f"http: cannot listen on 127.0.0.1:{port}" in second.log, second.log
            assert "Traceback" not in second.log
        finally:
            second.kill()
        assert not own.exists()  # its socket was bound before the port was tried: removed again
        assert await connections(admin) == before
        assert await first.stop() == 0
    finally:
        first.kill()


@pytest.mark.nats
async def test_nats_durable_a_second_daemon_with_the_same_instance_id_leaves_the_consumer_alone(
    sock: Path, nats_server: BrokerServer
) -> None:
    key, instance = f"claim-{uuid.uuid4().hex[:8]}", f"claim-{uuid.uuid4().hex[:8]}"
    args = ("--backend", nats_server.uri, "--mode", "durable", "--key", key, "--instance-id", instance)
    first = SpawnedDaemon(sock, *args, name="first")
    client = await nats.connect(nats_server.uri)
    try:
        await first.ready()
        jsm = client.jsm()
        stream, consumer = jetstream_name(key), jetstream_name(instance)
        before = await jsm.consumer_info(stream, consumer)
        for n in range(2):
            second = SpawnedDaemon(sock, *args, name=f"second{n}")
            try:
                assert await second.exited() == 3, second.log
                assert "in use by another running syncar" in second.log, second.log
            finally:
                second.kill()
        after = await jsm.consumer_info(stream, consumer)
        assert after.created == before.created, (before, after)  # not deleted and made again
        assert "resuming it" not in first.log and "Consumer Deleted" not in first.log, first.log
        assert await first.stop() == 0
    finally:
        first.kill()
        await client.close()


async def test_an_app_that_connects_while_the_broker_is_being_reached_is_served_once_the_daemon_is(sock: Path) -> None:
    """The socket is bound before the broker connect and served after it: an app that connects in between waits in
    the listen backlog, its `hello` unread, and gets its `welcome` once the daemon serves (before, it found no socket
    and retried). The HTTP port likewise: held (no one else can listen on it) and a probe waits, not refused (it
    was: asyncio and uvloop listen only once they serve)."""
    silent = socket.create_server(("127.0.0.1", 0))  # a broker that accepts and, until we close it, never answers
    silent.setblocking(False)
    port, http = silent.getsockname()[1], free_port()
    daemon = SpawnedDaemon(
        sock, "--http", f"127.0.0.1:{http}", "--backend", f"redis://127.0.0.1:{port}/0?socket_timeout=30"
    )
    try:
        loop = asyncio.get_running_loop()
        broker_side, _ = await asyncio.wait_for(loop.sock_accept(silent), 30)  # the daemon is connecting
        assert sock.exists()
        reader, writer = await asyncio.open_unix_connection(sock)  # accepted by the kernel, not by the daemon yet
        writer.write(b'{"type":"hello"}\n')
        probe_reader, probe = await asyncio.open_connection("127.0.0.1", http)
        probe.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with socket.socket() as other, pytest.raises(OSError):  # as a second syncar starting now would
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", http))
            other.listen()
        assert "ready: apps may connect" not in daemon.log  # the daemon still waits for its broker
        silent.close()
        broker_side.close()  # the broker goes away: the daemon starts without it and serves the app waiting
        welcome = await asyncio.wait_for(reader.readline(), 30)
        assert b'"type":"welcome"' in welcome and b'"broker":"down"' in welcome, welcome
        await wait_for(lambda: "ready: apps may connect" in daemon.log, what="the ready line")
        assert (await asyncio.wait_for(probe_reader.readline(), 30)).startswith(b"HTTP/1.1 200")
        probe.close()
        writer.close()
        assert await daemon.stop() == 0, daemon.log
    finally:
        silent.close()
        daemon.kill()


async def test_a_start_cancelled_while_the_broker_is_being_reached_leaves_no_socket_file(sock: Path) -> None:
    """An embedding app that gives up on the start (a timeout around it): the socket bound for it is removed."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        backend = f"redis://127.0.0.1:{silent.getsockname()[1]}/0?socket_timeout=30"
        daemon = Daemon(Settings(socket=sock, backend=backend, http="127.0.0.1:0"), handle_signals=False)
        start = asyncio.create_task(daemon.start())
        await wait_for(sock.exists, what="the socket to be bound")
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        assert not sock.exists()
        assert daemon.http is not None
        socket.create_server(("127.0.0.1", daemon.http.port)).close()  # the port is free again
    finally:
        silent.close()
