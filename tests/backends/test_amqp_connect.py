"""A RabbitMQ start that the connection ends under, against a real rabbitmq-server behind the fault suite's proxy.

Each way it ends is a broker that cannot be reached for now (`BackendUnavailable`), which the daemon retries in the
background: never what only a cancelled caller raises, nor what no `except BackendError` catches.
"""

from __future__ import annotations

import asyncio

import pamqp.frame
import pytest
from pamqp.commands import Connection

from backends.amqp import AmqpBackend
from backends.base import BackendConfig, BackendState, BackendUnavailable
from tests.brokers.rabbitmq import RabbitServer
from tests.faults.proxy import TcpProxy
from tests.utils import wait_for

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def server(rabbitmq_server: RabbitServer) -> RabbitServer:
    return rabbitmq_server


async def test_a_connection_aiormq_closes_as_it_opens_is_an_unreachable_broker_not_a_cancelled_start(
    server: RabbitServer,
) -> None:
    """aiormq counts its heartbeat's 3 silent intervals from the connection's creation, the handshake's time included:
    a handshake slower than that (each reply of the broker 2.5 s late, against 3 x 2 s with heartbeat=1) and it closes
    the connection as it opens, failing the channel's opening with CancelledError. start() let it out, and the
    daemon's background connect would have ended as if stopped, never connecting and never saying why (asked by
    review). The caller's own cancellation still cancels."""
    proxy = await TcpProxy.start(server.port)
    proxy.reply_latency = 2.5
    instance = AmqpBackend(BackendConfig(f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat=1", "t", 30.0))
    try:
        with pytest.raises(
            BackendUnavailable,
            match=r"^amqp: cannot connect to 127\.0\.0\.1:\d+ vhost '/': the connection was closed as it opened: ",
        ):
            await instance.start()
        assert instance.state is BackendState.CONNECTING
        proxy.reply_latency = 120.0
        starting = asyncio.create_task(instance.start())
        await wait_for(lambda: proxy.accepted == 2, 5, "the second start's connection")
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
    finally:
        await instance.close()
        await proxy.close()


async def test_a_broker_that_closes_the_socket_right_after_opening_the_connection_is_unreachable(
    server: RabbitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of the stream right behind Connection.OpenOk (a broker stopping, a proxy's idle timeout), at a frame
    boundary, ended the connection's reader as if closed cleanly, and aiormq failed every call waiting on the
    connection with a bare Exception: start() raised it, which no `except BackendError` catches (the daemon's
    background connect ended silently), nor `BROKER_ERRORS` (a subscribe, a declare)."""
    proxy = await TcpProxy.start(server.port)
    proxy.reply_latency = 0.2  # the hook below is in place long before the third reply
    instance = AmqpBackend(BackendConfig(f"amqp://guest:guest@127.0.0.1:{proxy.port}/", "t", 10.0))
    opened = pamqp.frame.marshal(Connection.OpenOk(), 0)
    sent: list[bytes] = []
    try:
        starting = asyncio.create_task(instance.start())
        await wait_for(lambda: bool(proxy.links_saying(b"AMQP")), 5, "the start's connection")
        client = proxy.links_saying(b"AMQP")[0].writers[0]
        write = client.write

        def then_the_end(data: bytes) -> None:  # what the proxy hands the client
            if sent and opened in sent[-1]:
                return  # nothing after the end
            sent.append(data)
            write(data)
            if opened in data:
                client.write_eof()

        monkeypatch.setattr(client, "write", then_the_end)
        with pytest.raises(BackendUnavailable, match=r"vhost '/': server connection unexpectedly closed"):
            await starting
        assert sent and sent[-1].endswith(opened), sent  # the end came right behind the OpenOk
    finally:
        await instance.close()
        await proxy.close()
