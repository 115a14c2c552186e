"""The NATS backend against a real nats-server (broadcast mode, core subjects)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.transport import TcpTransport

from backends.base import (
    OWN_IOVEC_BYTES,
    BackendConfig,
    BackendError,
    BackendRefused,
    BackendState,
    BackendUnavailable,
    MessageTooLarge,
    PublishTimeout,
    PublishUnconfirmed,
)
from backends.nats import NatsBackend
from backends.nats_common import describe
from tests.backends.support import Inbox, Started
from tests.brokers import serve
from tests.brokers.certs import make_certificates
from tests.brokers.nats import NatsServer
from tests.utils import wait_for

pytestmark = pytest.mark.nats

#: The fault suite's promise: a daemon is connected again this soon after the broker is back.
RECOVERY = 2.0


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    yield from serve(NatsServer())


Factory = Callable[..., Awaitable[NatsBackend]]


@pytest.fixture
def connect(server: NatsServer, started: Started) -> Factory:
    """Start backends on `server` (or a given URI); all are closed after the test."""

    async def start(
        uri: str | None = None, states: list[BackendState] | None = None, *, echo: bool = True
    ) -> NatsBackend:
        on_state = states.append if states is not None else None
        config = BackendConfig(uri or server.uri, f"test-{len(started)}", echo=echo)
        return await started(NatsBackend(config, on_state=on_state))

    return start


async def test_a_publish_and_its_confirmation_go_out_in_one_write(
    connect: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py's flusher wrote the PUBs and flush() its PING apart: two system calls per batch, over half of a
    publishing daemon's CPU at 1,000 events/s. Now one write carries both, and the server's PONG confirms them."""
    sender, receiver = await connect(), await connect()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    writes: list[bytes] = []  # what each system call wrote, of either backend

    def recording(original: Callable[[TcpTransport, Any], None]) -> Callable[[TcpTransport, Any], None]:
        def write(transport: TcpTransport, payload: Any) -> None:
            writes.append(bytes(payload) if isinstance(payload, bytes | bytearray | memoryview) else b"".join(payload))
            original(transport, payload)

        return write

    monkeypatch.setattr(TcpTransport, "write", recording(TcpTransport.write))
    monkeypatch.setattr(TcpTransport, "writelines", recording(TcpTransport.writelines))
    for n in range(10):
        await sender.publish(topic, [b"%d" % n, b"and another"])
    assert len(await inbox.wait(20)) == 20
    # Only the sender publishes: each of its 10 batches is one write, its PUBs with the PING that confirms them.
    batches = [written for written in writes if b"PUB " + topic.encode() in written]
    assert len(batches) == 10 and all(written.endswith(b"PING\r\n") for written in batches), batches


async def test_a_large_body_is_written_as_it_is_between_the_others(
    connect: Factory, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body of OWN_IOVEC_BYTES or more goes to the transport as it is, the very object the codec made, in the one
    vectored write of its batch: copied into the PUB command and then into the join of all pending writes, each
    1 MiB batch cost 2 MiB of copies. The bodies around it still arrive whole and in order, and the PONG still
    confirms them all."""
    sender, receiver = await connect(), await connect()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    large = [b"%d" % n * OWN_IOVEC_BYTES for n in (1, 2)]
    written: list[list[Any]] = []
    original: Callable[[TcpTransport, list[Any]], None] = TcpTransport.writelines  # unannotated in nats-py

    def writelines(transport: TcpTransport, payload: list[Any]) -> None:
        written.append(payload)
        original(transport, payload)

    monkeypatch.setattr(TcpTransport, "writelines", writelines)
    bodies = [b"before", large[0], b"between", large[1], b"after"]
    await sender.publish(topic, bodies)
    assert await inbox.wait(5) == bodies
    [batch] = [pieces for pieces in written if any(piece is large[0] for piece in pieces)]
    assert [piece for piece in batch if len(piece) >= OWN_IOVEC_BYTES] == large
    assert any(piece is large[1] for piece in batch) and batch[-1].endswith(b"PING\r\n")


async def test_a_confirmed_publish_sets_no_timer_and_wakes_no_flusher(connect: Factory, topic: str) -> None:
    """Each confirmation waited in asyncio.wait(timeout=...): a timer made and closed per batch (under uvloop a turn
    of the loop too); and client.publish() woke nats-py's flusher task, which found nothing left to write. One timer
    now bounds every confirmation, and the PUBs go out with their PING without the flusher."""
    sender, receiver = await connect(), await connect()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    loop = asyncio.get_running_loop()
    timers: list[str] = []
    woken: list[str] = []
    call_at, call_soon = loop.call_at, loop.call_soon

    publishing = asyncio.current_task()

    def counting_timers(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if asyncio.current_task() is publishing:  # not nats-py's own tasks' timers (its pings)
            timers.append(getattr(callback, "__qualname__", repr(callback)))
        return call_at(when, callback, *args, **kwargs)

    def counting_wakes(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        task = getattr(callback, "__self__", None)
        if isinstance(task, asyncio.Task):
            woken.append(getattr(task.get_coro(), "__qualname__", "?"))
        return call_soon(callback, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "call_at", counting_timers)
        patch.setattr(loop, "call_soon", counting_wakes)
        for n in range(20):
            await sender.publish(topic, [b"%d" % n])
    assert len(timers) <= 1, timers  # before: 20
    assert "Client._flusher" not in woken, woken  # before: 20 times
    assert len(await inbox.wait(20)) == 20


class Handing(Inbox):
    """An inbox that notes the Task each message was handed over in (None: the loop's I/O callback), and waits a
    turn of the loop in its handler for the bodies in `wait`."""

    def __init__(self, wait: frozenset[bytes] = frozenset()) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[Any] | None] = []
        self._wait = wait

    async def __call__(self, message: Any) -> None:
        self.tasks.append(asyncio.current_task())
        if message.body in self._wait:
            await asyncio.sleep(0)
        await super().__call__(message)


async def test_messages_are_handed_over_as_they_are_read_with_no_task_woken(
    own_server: NatsServer, connect: Factory, topic: str
) -> None:
    """nats-py's reader Task was woken through its StreamReader for each read, and queued each message for its
    subscription's Task, woken in turn to call the handler: two Task wake-ups per message, none now. After a
    reconnect too: the new connection is read the same way."""
    sender, receiver = await connect(own_server.uri), await connect(own_server.uri)
    inbox = Handing()
    await receiver.subscribe(topic, inbox)
    for n in range(20):
        await sender.publish(topic, [b"%d" % n])
    assert await inbox.wait(20) == [b"%d" % n for n in range(20)]
    assert inbox.tasks == [None] * 20  # before: nats-py's subscription Task's, each
    await asyncio.to_thread(own_server.restart)
    await wait_for(lambda: receiver.state is BackendState.RECONNECTING, what="RECONNECTING")
    await wait_for(lambda: receiver.state is BackendState.CONNECTED, timeout=RECOVERY + 3, what="CONNECTED")
    sender = await connect(own_server.uri)
    for n in range(20, 30):
        await sender.publish(topic, [b"%d" % n])
    assert await inbox.wait(30) == [b"%d" % n for n in range(30)]
    assert inbox.tasks[20:] == [None] * 10


async def test_a_handler_that_waits_still_gets_the_messages_one_at_a_time_in_order(
    connect: Factory, topic: str
) -> None:
    """A handler that waits holds the reading up until it is done: what came in the same read and after waits."""
    sender, receiver = await connect(), await connect()
    bodies = [b"%d" % n for n in range(300)]
    inbox = Handing(wait=frozenset(bodies[::7]))
    await receiver.subscribe(topic, inbox)
    for start in range(0, 300, 30):  # several messages per read
        await sender.publish(topic, bodies[start : start + 30])
    assert await inbox.wait(300) == bodies
    assert inbox.attempts == bodies  # none handed over while another was waiting


class Garbling:
    """A stand-in for nats-server that answers PINGs and, at the second one after a SUB (the first one read by
    nats-py's reader Task, which hands the connection over), sends a message and then a line that is no NATS
    operation."""

    def __init__(self) -> None:
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b'INFO {"server_id":"garbling","max_payload":1048576,"proto":1}\r\n')
        sid: int | None = None
        pings = 0  # since the SUB
        while line := await reader.readline():
            if line.startswith(b"SUB "):
                sid = int(line.split()[-1])
            elif line == b"PING\r\n":
                writer.write(b"PONG\r\n")
                if sid is not None:
                    pings += 1
                    if pings == 2 and self.connections == 1:
                        writer.write(b"MSG k %d 2\r\nok\r\nNONSENSE\r\n" % sid)
        writer.close()


async def test_a_protocol_error_read_as_bytes_arrive_reconnects_as_nats_py_would(
    connect: Factory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What the parser raises reaches nats-py's reader, which reconnects, not the event loop, which would log it
    as a fatal error of the transport."""
    fake = Garbling()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    states: list[BackendState] = []
    try:
        receiver = await connect(f"nats://127.0.0.1:{port}", states)
        inbox = Inbox()
        await receiver.subscribe(topic, inbox)
        with contextlib.suppress(BackendError):  # its PONG comes before the garbage, but the loss may win
            await receiver.publish(topic, [b"confirmed"])
        assert await inbox.wait(1) == [b"ok"]
        await wait_for(lambda: fake.connections == 2, timeout=RECOVERY + 3, what="a second connection")
        await wait_for(lambda: len(states) >= 3, timeout=RECOVERY + 3, what="connected again")
        assert states[:3] == [BackendState.CONNECTED, BackendState.RECONNECTING, BackendState.CONNECTED]
    finally:
        server.close()
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize(
    "uri",
    ["nats://127.0.0.1:{port}", "nats://alice:hunter2secret@127.0.0.1:{port}", "nats://tokensecret42@127.0.0.1:{port}"],
)
async def test_start_against_a_closed_port_fails_fast_and_clean(uri: str) -> None:
    from tests.brokers import free_port

    backend = NatsBackend(BackendConfig(uri.format(port=free_port()), "test"))
    began = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await backend.start()
    assert time.monotonic() - began < 1.0
    message = str(caught.value)
    assert message.startswith("nats: cannot connect to 127.0.0.1:") and message.endswith(": connection refused")
    assert "\n" not in message and message == message.lower()
    assert "hunter2secret" not in message and "tokensecret42" not in message
    await backend.close()
    assert backend.state is BackendState.CLOSED


async def test_bad_uri_options_are_named() -> None:
    backend = NatsBackend(BackendConfig("nats://127.0.0.1:4222?tls_cafile=x", "test"))
    with pytest.raises(BackendError, match="unknown URI option 'tls_cafile'"):
        await backend.start()
    backend = NatsBackend(BackendConfig("tls://127.0.0.1:4222?tls_ca=/nonexistent/ca.pem", "test"))
    with pytest.raises(BackendError, match=re.escape("tls_ca: cannot load '/nonexistent/ca.pem'")):
        await backend.start()


def test_a_reason_is_one_lowercase_line_without_nats_py_wrapping_or_secrets() -> None:
    # What nats-py makes of a server's -ERR line: "nats: " and the line's quotes around the server's words.
    assert describe(nats.errors.Error("nats: 'Maximum Connections Exceeded'")) == "maximum connections exceeded"
    assert describe(nats.errors.AuthorizationError()) == "authorization violation (wrong user, password or token?)"
    # A secret a server echoes is masked whatever the case of its letters (it was lowercased first, then missed).
    echoed = describe(nats.errors.Error("nats: 'Unknown Option Hunter2Secret'"), ["Hunter2Secret", None])
    assert echoed == "unknown option ***"
    assert describe(ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 4222)")) == "connection refused"


# -- the broker going away ---------------------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[NatsServer]:
    """A server this test alone may kill."""
    yield from serve(NatsServer())


async def test_publish_while_the_broker_is_down_fails_promptly(
    own_server: NatsServer, connect: Factory, topic: str
) -> None:
    backend = await connect(own_server.uri)
    await asyncio.to_thread(own_server.kill)
    await wait_for(lambda: backend.state is BackendState.RECONNECTING, what="RECONNECTING")
    for _ in range(3):
        began = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"^nats: not connected to 127\.0\.0\.1:"):
            await backend.publish(topic, [b"lost?"])
        assert time.monotonic() - began < 1.0  # at once, not after a timeout (seconds); a loaded machine stalls
    with pytest.raises(BackendUnavailable):
        await backend.subscribe(topic, Inbox())
    # Nothing was buffered behind the core's back: after the restart the message does not turn up.
    inbox = Inbox()
    await asyncio.to_thread(own_server.start)
    await wait_for(lambda: backend.state is BackendState.CONNECTED, timeout=RECOVERY + 3, what="CONNECTED")
    await backend.subscribe(topic, inbox)
    await backend.publish(topic, [b"new"])
    assert await inbox.wait(1) == [b"new"]


async def test_close_while_reconnecting(own_server: NatsServer, connect: Factory) -> None:
    states: list[BackendState] = []
    backend = await connect(own_server.uri, states)
    await asyncio.to_thread(own_server.kill)
    await wait_for(lambda: backend.state is BackendState.RECONNECTING, what="RECONNECTING")
    async with asyncio.timeout(3):
        await backend.close()
    assert states == [BackendState.CONNECTED, BackendState.RECONNECTING, BackendState.CLOSED]


async def test_a_connection_nats_py_gave_up_is_replaced(connect: Factory, topic: str) -> None:
    # nats-py closes a connection for good after some server errors (an -ERR it does not expect). Closing its
    # client from outside takes the same path: the closed callback, with no close() of ours behind it.
    states: list[BackendState] = []
    receiver, sender = await connect(states=states), await connect()
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    client = receiver.current_client()
    assert client is not None
    await client.close()
    # A closed nats-py client never connects again: CONNECTED after RECONNECTING is a new client.
    await wait_for(lambda: len(states) == 3, timeout=RECOVERY, what="a new connection")
    assert states == [BackendState.CONNECTED, BackendState.RECONNECTING, BackendState.CONNECTED]
    await sender.publish(topic, [b"to the new connection"])
    assert await inbox.wait(1) == [b"to the new connection"]
    await receiver.publish(topic, [b"from it"])
    assert await inbox.wait(2) == [b"to the new connection", b"from it"]


async def test_a_connection_lost_while_a_publish_awaits_its_pong_fails_it_at_once(
    own_server: NatsServer, connect: Factory, topic: str
) -> None:
    """The PONG of a connection that is gone never comes (a reconnect forgets the PINGs in flight): the wait for it
    ends when the loss is reported, not at the confirmation's 5 s bound."""
    backend = await connect(own_server.uri)
    assert own_server.process is not None
    own_server.process.send_signal(signal.SIGSTOP)  # the PUB and PING go out, nothing answers
    stat = Path(f"/proc/{own_server.process.pid}/stat")
    await wait_for(lambda: stat.read_text().rpartition(")")[2].split()[0] == "T", what="the server stopped")
    publishing = asyncio.ensure_future(backend.publish(topic, [b"never confirmed"]))
    await asyncio.sleep(0.3)
    assert not publishing.done()
    began = time.monotonic()
    await asyncio.to_thread(own_server.kill)  # the socket is reset under the waiting publish
    with pytest.raises(PublishUnconfirmed, match="lost before the server confirmed"):
        await publishing
    assert time.monotonic() - began < 3.0


@pytest.mark.slow
async def test_a_stuck_server_times_the_publish_out_and_the_backend_reconnects(
    own_server: NatsServer, connect: Factory, topic: str
) -> None:
    # SIGSTOP: the socket stays open but nothing answers, as with a half-open connection or a hung broker.
    states: list[BackendState] = []
    backend = await connect(own_server.uri, states)
    inbox = Inbox()
    await backend.subscribe(topic, inbox)
    assert own_server.process is not None
    own_server.process.send_signal(signal.SIGSTOP)
    try:
        # The signal is delivered asynchronously: make sure the server stopped before publishing.
        stat = Path(f"/proc/{own_server.process.pid}/stat")
        await wait_for(lambda: stat.read_text().rpartition(")")[2].split()[0] == "T", what="the server stopped")
        began = time.monotonic()
        with pytest.raises(PublishTimeout, match="did not confirm within 5s; reconnecting"):
            await backend.publish(topic, [b"unconfirmed"])
        assert 4.5 < time.monotonic() - began < 6.0
        await wait_for(lambda: backend.state is BackendState.RECONNECTING, what="RECONNECTING")
    finally:
        own_server.process.send_signal(signal.SIGCONT)
    await wait_for(lambda: backend.state is BackendState.CONNECTED, timeout=RECOVERY + 5, what="CONNECTED")
    assert states == [BackendState.CONNECTED, BackendState.RECONNECTING, BackendState.CONNECTED]
    await backend.publish(topic, [b"confirmed"])
    # The unconfirmed message may still have arrived: a timeout says "not confirmed", not "lost".
    await wait_for(lambda: b"confirmed" in inbox.bodies, what="the message published after recovery")
    assert set(inbox.bodies) <= {b"unconfirmed", b"confirmed"}


# -- payload limits ------------------------------------------------------------------------------------------


class SmallPayloadServer(NatsServer):
    MAX_PAYLOAD = 64 * 1024

    def command(self) -> list[str]:
        config = self.dir / "nats.conf"
        config.write_text(f"max_payload: {self.MAX_PAYLOAD}\n")
        return [*super().command(), "-c", str(config)]


@pytest.mark.parametrize("broker_cls", [NatsServer, SmallPayloadServer], ids=["default", "64KiB"])
async def test_max_message_bytes_is_the_servers_max_payload(
    connect: Factory, topic: str, broker_cls: type[NatsServer]
) -> None:
    broker = broker_cls()
    broker.start()
    try:
        backend = await connect(broker.uri)
        limit = getattr(broker_cls, "MAX_PAYLOAD", 1024 * 1024)
        assert backend.max_message_bytes == limit
        inbox = Inbox()
        await backend.subscribe(topic, inbox)
        with pytest.raises(MessageTooLarge, match=f"max_payload of {limit} bytes"):
            await backend.publish(topic, [b"small", b"x" * (limit + 1)])
        await backend.publish(topic, [b"y" * limit])
        # The oversized batch was refused whole: its small first message never went out.
        assert await inbox.wait(1) == [b"y" * limit]
        assert backend.state is BackendState.CONNECTED
    finally:
        await asyncio.to_thread(broker.cleanup)


# -- credentials and TLS -------------------------------------------------------------------------------------


class AuthServer(NatsServer):
    def command(self) -> list[str]:
        return [*super().command(), "--user", "alice", "--pass", "s3cr:t@x"]


async def test_user_and_password_from_the_uri(connect: Factory, topic: str) -> None:
    broker = AuthServer()
    broker.start()
    try:
        backend = await connect(f"nats://alice:s3cr%3At%40x@127.0.0.1:{broker.port}")
        inbox = Inbox()
        await backend.subscribe(topic, inbox)
        await backend.publish(topic, [b"authenticated"])
        assert await inbox.wait(1) == [b"authenticated"]
        # The server answers -ERR and closes at once; a reset may overtake the -ERR, and the hint stays.
        with pytest.raises(BackendRefused, match=r"\(wrong user, password or token\?\)$") as caught:
            await connect(f"nats://alice:wrongpass@127.0.0.1:{broker.port}")
        assert "wrongpass" not in str(caught.value)
    finally:
        await asyncio.to_thread(broker.cleanup)


class TlsServer(NatsServer):
    def command(self) -> list[str]:
        d = self.dir
        return [
            *super().command(),
            "--tlscert",
            str(d / "server.pem"),
            "--tlskey",
            str(d / "server.key"),
            "--tlscacert",
            str(d / "ca.pem"),
            "--tlsverify",
        ]


async def test_tls_with_ca_and_client_certificate(connect: Factory, server: NatsServer, topic: str) -> None:
    broker = TlsServer()
    make_certificates(broker.dir)
    broker.start()
    d = broker.dir
    try:
        backend = await connect(
            f"tls://127.0.0.1:{broker.port}?tls_ca={d}/ca.pem&tls_cert={d}/client.pem&tls_key={d}/client.key"
        )
        inbox = Inbox()
        await backend.subscribe(topic, inbox)
        await backend.publish(topic, [b"encrypted"])
        assert await inbox.wait(1) == [b"encrypted"]
        # Without a client certificate: TLS 1.3 may tell the client only by closing, so the reason varies.
        with pytest.raises(BackendError, match=rf"^nats: cannot connect to 127\.0\.0\.1:{broker.port}: "):
            await connect(f"tls://127.0.0.1:{broker.port}?tls_ca={d}/ca.pem")
        verify = "tls: certificate verify failed: unable to get local issuer certificate"
        with pytest.raises(BackendRefused, match=verify):
            await connect(f"tls://127.0.0.1:{broker.port}")  # the system CAs do not know the test CA
        with pytest.raises(BackendRefused, match="did not offer TLS, which the URI requires"):
            await connect(server.uri.replace("nats://", "tls://") + f"?tls_ca={d}/ca.pem")
    finally:
        await asyncio.to_thread(broker.cleanup)
