"""Durable mode's consumer against a real `nats-server -js` when a delivery is lost on the way: the ones after it
are not handled before it.

Fault case 8 of the suite (tests/faults/test_cluster_nats.py: the node the receiving daemon is connected to is
SIGKILLed) lost acknowledged events this way: nats-py carried the consumer's inbox to another node, the consumer
leader (on a live node) went on filling the pull request there, and the delivery that was on its way through the
dead node was simply missing from what arrived. A proxy that drops one delivery makes that loss at will.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import pytest
from nats.js import JetStreamContext

from backends.base import BackendConfig, Mode
from backends.nats import NatsBackend, NatsJetStreamBackend
from backends.nats_jetstream import jetstream_name
from tests.backends.support import Inbox, Started
from tests.brokers import serve
from tests.brokers.nats import NatsServer
from tests.utils import wait_for

pytestmark = pytest.mark.nats

#: Well under the consumer's ACK_WAIT (30 s), after which the server sends a lost delivery again by itself.
RECOVERY = 10.0


class DeliveryDropper:
    """A TCP proxy to a NATS server that forwards everything, except that once armed it drops the next JetStream
    delivery (a MSG or HMSG with a `$JS.ACK.` reply) on its way to the client: lost, as on a route through a node
    that died. The server counts it delivered; the client never hears of it."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.dropped: list[bytes] = []  # the control lines of the deliveries dropped
        self._armed = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DeliveryDropper:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_next_delivery(self) -> None:
        self._armed = True

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        pipes = (self._copy(client_reader, server_writer), self._filter(server_reader, client_writer))
        for pipe in pipes:
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _filter(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The server's side, one protocol line (and a message's payload) at a time."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                line = await reader.readuntil(b"\r\n")
                words = line.split()
                if words and words[0] in (b"MSG", b"HMSG"):
                    payload = await reader.readexactly(int(words[-1]) + 2)
                    # MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <header size> <size>
                    reply = words[3] if len(words) == (5 if words[0] == b"MSG" else 6) else b""
                    if self._armed and reply.startswith(b"$JS.ACK."):
                        self._armed = False
                        self.dropped.append(line)
                        continue
                    line += payload
                writer.write(line)
                await writer.drain()
        writer.close()


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    yield from serve(NatsServer())


@pytest.fixture
async def dropper(server: NatsServer) -> AsyncIterator[DeliveryDropper]:
    async with DeliveryDropper(server.port) as proxy:
        yield proxy


@pytest.fixture
async def jsm(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(server.uri)
    yield client.jetstream()
    await client.close()


Factory = Callable[[str, str], Awaitable[NatsBackend]]


@pytest.fixture
def connect(started: Started) -> Factory:
    async def start(instance: str, uri: str) -> NatsBackend:
        return await started(NatsJetStreamBackend(BackendConfig(uri, instance, mode=Mode.DURABLE)))

    return start


def bodies(start: int, stop: int) -> list[bytes]:
    return [b"%d" % i for i in range(start, stop)]


async def test_a_delivery_lost_on_the_way_is_handled_in_order_before_the_ones_after_it(
    server: NatsServer, dropper: DeliveryDropper, connect: Factory, jsm: JetStreamContext, topic: str
) -> None:
    receiver = await connect("r", f"nats://127.0.0.1:{dropper.port}")
    sender = await connect("s", server.uri)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, bodies(0, 5))
    assert await inbox.wait(5) == bodies(0, 5)
    dropper.drop_next_delivery()
    await sender.publish(topic, [b"5"])
    await wait_for(lambda: bool(dropper.dropped), RECOVERY, "the proxy to drop the delivery of 5")
    info = await jsm.consumer_info(jetstream_name(topic), jetstream_name("r"))
    assert info.num_ack_pending == 1 and info.delivered.stream_seq == 6  # the server counts 5 delivered
    await sender.publish(topic, bodies(6, 10))
    # Without the check of the consumer sequence, 6-9 are handled at once and 5 comes after ACK_WAIT (30 s).
    assert await inbox.wait(10, RECOVERY) == bodies(0, 10)
    assert inbox.positions == [str(n) for n in range(1, 11)]
    await sender.publish(topic, [b"10"])
    assert await inbox.wait(11, RECOVERY) == bodies(0, 11)  # read on, nothing twice
