"""The NATS backend's durable mode against a real `nats-server -js`: JetStream streams and durable consumers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api

from backends.base import BackendConfig, BackendError, BackendState, BackendUnavailable, Feature, Message, Mode
from backends.nats import NatsBackend, NatsJetStreamBackend
from backends.nats_jetstream import ACK_WAIT, MAX_ACK_PENDING, durable_subject, ensure_stream, jetstream_name
from tests.backends.support import Inbox, Started
from tests.brokers import serve
from tests.brokers.nats import NatsServer
from tests.utils import RawClient, eventually, publish_frame, run_daemon, wait_for

pytestmark = pytest.mark.nats

RECOVERY = 2.0
TTL = 3600.0


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    yield from serve(NatsServer())


@pytest.fixture
def own_server() -> Iterator[NatsServer]:
    yield from serve(NatsServer())


Factory = Callable[..., Awaitable[NatsJetStreamBackend]]


@pytest.fixture
def connect(server: NatsServer, started: Started) -> Factory:
    """Start durable backends (instance id, server, limits as given); all are closed after the test."""

    async def start(
        instance: str,
        uri: str | None = None,
        *,
        retention: int = 100_000,
        ttl: float = TTL,
        states: list[BackendState] | None = None,
    ) -> NatsJetStreamBackend:
        config = BackendConfig(uri or server.uri, instance, mode=Mode.DURABLE, retention=retention, instance_ttl=ttl)
        return await started(NatsJetStreamBackend(config, on_state=states.append if states is not None else None))

    return start


@pytest.fixture
async def jsm(server: NatsServer) -> AsyncIterator[nats.js.JetStreamContext]:
    """JetStream's own API on the module's server, to look at what the backend made."""
    client = await nats.connect(server.uri)
    yield client.jetstream()
    await client.close()


def bodies(start: int, stop: int) -> list[bytes]:
    return [b"%d" % i for i in range(start, stop)]


async def test_publish_returns_once_jetstream_stored_it(connect: Factory, jsm: Any, topic: str) -> None:
    sender = await connect("s")
    assert sender.supports(Feature.DURABLE)
    await sender.publish(topic, bodies(0, 50))
    # No subscriber anywhere: the messages are in the stream all the same, on the durable subject, on disk.
    info = await jsm.stream_info(jetstream_name(topic))
    assert info.state.messages == 50
    assert info.config.subjects == [durable_subject(topic)] == [f"syncar.durable.{topic}"]
    assert info.config.storage == api.StorageType.FILE
    message = await jsm.get_msg(jetstream_name(topic), 50)
    assert message.data == b"49"


async def test_round_trip_in_order_with_positions(connect: Factory, topic: str) -> None:
    receiver, sender = await connect("r"), await connect("s")
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    started = time.time()
    for start in range(0, 1000, 100):
        await sender.publish(topic, bodies(start, start + 100))
    assert await inbox.wait(1000) == bodies(0, 1000)
    assert inbox.positions == [str(n) for n in range(1, 1001)]  # the stream sequence
    # The server's time of each stored message (what signed messages are judged against).
    stored = [t for t in inbox.accepted if t is not None]
    assert len(stored) == 1000 and stored == sorted(stored) and started - 1 < stored[0] <= stored[-1] < time.time() + 1


async def test_unacknowledged_messages_of_a_stopped_consumer_come_back_at_once_and_in_order(
    connect: Factory, jsm: Any, topic: str
) -> None:
    sender = await connect("s")
    stuck = asyncio.Event()
    got: list[bytes] = []

    async def hangs_at_5(message: Message) -> None:  # a daemon that stopped responding, then was stopped
        got.append(message.body)
        if message.body == b"5":
            stuck.set()
            await asyncio.Event().wait()

    first = await connect("b")
    await first.subscribe(topic, hangs_at_5)
    await sender.publish(topic, bodies(0, 40))
    async with asyncio.timeout(10):
        await stuck.wait()
    info = await jsm.consumer_info(jetstream_name(topic), jetstream_name("b"))
    assert info.num_ack_pending > 1  # 5 and those delivered behind it
    await first.close()
    inbox = Inbox()
    began = time.monotonic()
    await (await connect("b")).subscribe(topic, inbox)
    # 5 onwards, in order, long before the server's own redelivery (ack_wait) would have sent them again.
    assert await inbox.wait(35, timeout=5) == bodies(5, 40)
    assert time.monotonic() - began < ACK_WAIT / 3


async def test_a_restart_with_nothing_unacknowledged_keeps_the_consumer(connect: Factory, jsm: Any, topic: str) -> None:
    """The common restart (a daemon stopped between deliveries) resumes the consumer as it is: deleting and making it
    again would, on a cluster with a node down, leave that node on the consumer's old raft group when it comes back
    (nats-server before 2.10.26, #6507; see docs/backends/nats.md). The consumer is made again only when the run
    before left it messages delivered and not acknowledged (test above)."""
    sender, first = await connect("s"), await connect("b")
    inbox = Inbox()
    await first.subscribe(topic, inbox)
    await sender.publish(topic, bodies(0, 10))
    assert await inbox.wait(10) == bodies(0, 10)
    stream, consumer = jetstream_name(topic), jetstream_name("b")

    async def all_acknowledged() -> bool:  # acknowledgements go out without waiting for a reply
        info: api.ConsumerInfo = await jsm.consumer_info(stream, consumer)  # unannotated in nats-py
        return info.num_ack_pending == 0

    await eventually(all_acknowledged, RECOVERY, "the acknowledgements of 0-9")
    before = await jsm.consumer_info(stream, consumer)
    await first.close()
    await sender.publish(topic, bodies(10, 20))  # while b is away
    again = Inbox()
    await (await connect("b")).subscribe(topic, again)
    assert await again.wait(10) == bodies(10, 20)
    await sender.publish(topic, [b"20"])
    assert await again.wait(11) == bodies(10, 21)  # nothing twice, nothing lost
    assert again.positions == [str(n) for n in range(11, 22)]
    after = await jsm.consumer_info(stream, consumer)
    assert after.created == before.created  # the same consumer, not one made again
    assert after.delivered.consumer_seq == 21  # its deliveries numbered on from the first run's


async def test_retention_keeps_the_newest_messages(connect: Factory, jsm: Any, topic: str) -> None:
    sender = await connect("s", retention=1000)
    away = await connect("away", retention=1000)
    await away.subscribe(topic, Inbox())
    await away.close()
    for start in range(0, 1500, 250):
        await sender.publish(topic, bodies(start, start + 250))
    info = await jsm.stream_info(jetstream_name(topic))
    assert info.config.max_msgs == 1000 and info.config.discard == api.DiscardPolicy.OLD
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (1000, 501, 1500)
    inbox = Inbox()
    await (await connect("away", retention=1000)).subscribe(topic, inbox)
    assert await inbox.wait(1000) == bodies(500, 1500)  # the oldest 500 were dropped for it


async def test_stream_and_consumer_settings(connect: Factory, jsm: Any, topic: str) -> None:
    backend = await connect("pod/0 x.y", retention=5000, ttl=600.0)
    await backend.subscribe(topic, Inbox())
    stream = await jsm.stream_info(jetstream_name(topic))
    assert (stream.config.max_msgs, stream.config.max_age) == (5000, 600.0)
    consumers = [c.name for c in await jsm.consumers_info(jetstream_name(topic))]
    name = jetstream_name("pod/0 x.y")
    assert consumers == [name] and name.startswith("syncar-pod_0_x_y_")
    consumer = await jsm.consumer_info(jetstream_name(topic), name)
    config = consumer.config
    assert config.durable_name == name
    assert config.ack_policy == api.AckPolicy.EXPLICIT
    assert config.inactive_threshold == 600.0  # the GC of instances that never come back
    assert config.max_ack_pending == MAX_ACK_PENDING and config.ack_wait == ACK_WAIT
    assert config.deliver_policy == api.DeliverPolicy.BY_START_SEQUENCE and config.opt_start_seq == 1

    # The same instance restarted with other limits brings the stream to them, and updates its consumer's ttl.
    await backend.close()
    again = await connect("pod/0 x.y", retention=8000, ttl=900.0)
    await again.subscribe(topic, Inbox())
    stream = await jsm.stream_info(jetstream_name(topic))
    assert (stream.config.max_msgs, stream.config.max_age) == (8000, 900.0)
    consumer = await jsm.consumer_info(jetstream_name(topic), name)
    assert consumer.config.inactive_threshold == 900.0


def test_names_are_sanitised_stable_and_distinct() -> None:
    names = {raw: jetstream_name(raw) for raw in ("web-1", "a.b", "a_b", "a b", "x" * 100, "pod/0", "*>")}
    assert names["web-1"] == "syncar-web-1" and names["a_b"] == "syncar-a_b"
    assert len(set(names.values())) == len(names)
    for name in names.values():
        assert len(name) <= 56 and all(c.isalnum() or c in "-_" for c in name)
    assert jetstream_name("a.b") == names["a.b"]
    with pytest.raises(BackendError, match="not a valid subject"):
        durable_subject("bad key")


async def test_an_instance_away_longer_than_the_ttl_is_forgotten(connect: Factory, jsm: Any, topic: str) -> None:
    stays, leaves = await connect("stays", ttl=1.0), await connect("leaves", ttl=1.0)
    inbox = Inbox()
    await stays.subscribe(topic, inbox)
    await leaves.subscribe(topic, Inbox())
    await leaves.close()
    stream = jetstream_name(topic)

    async def consumers() -> list[str]:
        return sorted(c.name for c in await jsm.consumers_info(stream))

    deadline = time.monotonic() + 10
    while await consumers() != [jetstream_name("stays")]:
        assert time.monotonic() < deadline, f"still there: {await consumers()}"
        await asyncio.sleep(0.2)
    # The one still connected kept its consumer (its waiting pull request is activity), idle as it was.
    await stays.publish(topic, [b"still here"])
    assert await inbox.wait(1) == [b"still here"]


async def test_broadcast_and_durable_subjects_are_apart(server: NatsServer, connect: Factory, topic: str) -> None:
    durable = await connect("d")
    broadcast = NatsBackend(BackendConfig(server.uri, "b"))
    await broadcast.start()
    try:
        assert not broadcast.supports(Feature.DURABLE)
        plain, stored = Inbox(), Inbox()
        await broadcast.subscribe(topic, plain)
        await durable.subscribe(topic, stored)
        await durable.publish(topic, [b"durable"])
        await broadcast.publish(topic, [b"broadcast"])
        assert await stored.wait(1) == [b"durable"]
        assert await plain.wait(1) == [b"broadcast"]
        await durable.publish(topic, [b"durable 2"])
        assert await stored.wait(2) == [b"durable", b"durable 2"]
        assert plain.bodies == [b"broadcast"]
    finally:
        await broadcast.close()


class PlainServer(NatsServer):
    def command(self) -> list[str]:
        return [c for c in super().command() if c != "-js"][:-2]  # no -js, no -sd DIR


async def test_a_server_without_jetstream_is_a_clear_error(connect: Factory, topic: str) -> None:
    broker = PlainServer()
    broker.start()
    try:
        backend = await connect("x", broker.uri)
        with pytest.raises(
            BackendError,
            match=r"JetStream is not enabled on 127\.0\.0\.1:\d+ \(durable mode needs "
            r"nats-server -js\)$",
        ):
            await backend.subscribe(topic, Inbox())
        with pytest.raises(BackendError, match="JetStream is not enabled"):
            await backend.publish(topic, [b"x"])
    finally:
        await asyncio.to_thread(broker.cleanup)


# -- the broker killed -----------------------------------------------------------------------------------------


async def test_broker_killed_mid_stream_loses_nothing_confirmed(
    own_server: NatsServer, connect: Factory, topic: str
) -> None:
    states: list[BackendState] = []
    receiver = await connect("r", own_server.uri, states=states)
    sender = await connect("s", own_server.uri)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    confirmed: list[bytes] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def stream() -> None:  # as the outbox does: a batch is retried until confirmed, then the next one
        sent = 0
        while not stop.is_set() and sent < 1_000_000:
            batch = bodies(sent, sent + 20)
            try:
                await sender.publish(topic, batch)
            except BackendError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                await wait_for(lambda: sender.state is BackendState.CONNECTED, timeout=20, what="sender CONNECTED")
                await asyncio.sleep(0.05)  # the outbox's back-off before a retry
                continue
            confirmed.extend(batch)
            sent += 20

    task = asyncio.create_task(stream())
    try:
        await wait_for(lambda: len(confirmed) >= 2000, what="2000 confirmed")
        await asyncio.to_thread(own_server.kill)
        await wait_for(lambda: receiver.state is BackendState.RECONNECTING, what="RECONNECTING")
        at_kill = len(confirmed)
        await asyncio.to_thread(own_server.start)
        back = time.monotonic()
        await wait_for(
            lambda: receiver.state is BackendState.CONNECTED and sender.state is BackendState.CONNECTED,
            timeout=RECOVERY + 3,
            what="CONNECTED again",
        )
        assert time.monotonic() - back < RECOVERY
        await wait_for(lambda: len(confirmed) >= at_kill + 2000, what=f"2000 more confirmed; {failures[-3:]}")
    finally:
        stop.set()
        await task
    assert failures, "the kill did not interrupt the stream"
    expected = set(confirmed)
    await wait_for(lambda: expected <= set(inbox.bodies), timeout=20, what="every confirmed message")
    # Each confirmed message arrived, in publish order; a batch sent again after a lost PubAck may come twice.
    assert list(dict.fromkeys(inbox.bodies)) == confirmed
    assert states == [BackendState.CONNECTED, BackendState.RECONNECTING, BackendState.CONNECTED]


async def test_publish_while_the_broker_is_down_fails_promptly(
    own_server: NatsServer, connect: Factory, topic: str
) -> None:
    backend = await connect("s", own_server.uri)
    await backend.publish(topic, [b"stored"])
    await asyncio.to_thread(own_server.kill)
    await wait_for(lambda: backend.state is BackendState.RECONNECTING, what="RECONNECTING")
    began = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await backend.publish(topic, [b"not now"])
    assert time.monotonic() - began < 1.0  # at once, not after a timeout (seconds); a loaded machine stalls
    await asyncio.to_thread(own_server.start)
    await wait_for(lambda: backend.state is BackendState.CONNECTED, timeout=RECOVERY + 3, what="CONNECTED")
    await backend.publish(topic, [b"later"])
    client = await nats.connect(own_server.uri)
    try:
        info = await client.jetstream().stream_info(jetstream_name(topic))
        assert info.state.messages == 2  # the stream survived the SIGKILL on disk; the refused one is not in it
    finally:
        await client.close()


async def test_a_connection_nats_py_gave_up_is_replaced_and_the_consumer_resumes(connect: Factory, topic: str) -> None:
    states: list[BackendState] = []
    receiver, sender = await connect("r", states=states), await connect("s")
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    await sender.publish(topic, bodies(0, 5))
    await inbox.wait(5)
    client = receiver.current_client()
    assert client is not None
    await client.close()  # as nats-py does after a server error it does not expect
    await sender.publish(topic, bodies(5, 10))  # while the receiver has no connection
    # A closed nats-py client never connects again: CONNECTED after RECONNECTING is a new client.
    await wait_for(lambda: len(states) == 3, timeout=RECOVERY, what="a new connection")
    await sender.publish(topic, bodies(10, 15))
    assert list(dict.fromkeys(await inbox.wait(15))) == bodies(0, 15)
    assert states == [BackendState.CONNECTED, BackendState.RECONNECTING, BackendState.CONNECTED]


# -- two daemons ------------------------------------------------------------------------------------------------


async def test_a_daemon_that_was_stopped_delivers_what_it_missed_once_and_in_order(
    server: NatsServer, sock_dir: Path, topic: str
) -> None:
    common: dict[str, Any] = {"backend": server.uri, "mode": "durable", "key": topic}
    sock_a, sock_b = sock_dir / "a.sock", sock_dir / "b.sock"
    async with run_daemon(sock_b, instance_id=f"b-{topic}", **common):
        pass  # b has run once: its consumer exists
    async with run_daemon(sock_a, instance_id=f"a-{topic}", **common):
        app_a = await RawClient.connect(sock_a, {})
        for i in range(500):
            await app_a.send(publish_frame(data=i, id=f"e{i}", ack=True))
        acks = [(await app_a.frame_of("ack"))["id"] for _ in range(500)]
        assert acks == [f"e{i}" for i in range(500)]  # each one stored by JetStream
        async with run_daemon(sock_b, instance_id=f"b-{topic}", **common) as daemon_b:
            # The daemon read its backlog as it started, before any app could connect, so the app asks for this
            # run's replay buffer from its start (the core has no other way to say "from before I connected").
            app_b = await RawClient.connect(sock_b, {"resume": {"epoch": daemon_b.relay.epoch, "seq": 0}})
            events = await app_b.events(500)
            assert [e["data"] for e in events] == list(range(500))
            assert {e["origin"] for e in events} == {f"a-{topic}"}
            await app_a.send(publish_frame(data="marker", id="marker"))
            assert (await app_b.frame_of("event"))["data"] == "marker"  # nothing twice in between
            await app_b.close()
        await app_a.close()


async def test_daemons_making_one_stream_at_the_same_moment_all_get_it(server: NatsServer, topic: str) -> None:
    """Two daemons starting together each ask JetStream for the key's stream; the one that comes second while the
    first's is being made can be told "subjects overlap with an existing stream" (a fault-suite start in CI exited 3
    on it). That stream is the one asked for: both get it. Several rounds, each on a key of its own."""
    clients = [await nats.connect(server.uri) for _ in range(3)]
    try:
        for round_ in range(60):
            key = f"{topic}-{round_}"
            config = BackendConfig(server.uri, "i", mode=Mode.DURABLE, retention=1000, instance_ttl=TTL)
            made = await asyncio.gather(*(ensure_stream(c.jetstream(), key, config) for c in clients))
            assert {info.config.name for info in made} == {jetstream_name(key)}
    finally:
        for client in clients:
            await client.close()


async def test_a_stream_of_another_name_on_our_subject_is_refused_in_one_line(
    server: NatsServer, jsm: Any, topic: str
) -> None:
    await jsm.add_stream(name=f"not-ours-{topic}", subjects=[durable_subject(topic)])
    config = BackendConfig(server.uri, "i", mode=Mode.DURABLE, retention=1000, instance_ttl=TTL)
    with pytest.raises(BackendError, match="JetStream refused the stream: subjects overlap"):
        await ensure_stream(jsm, topic, config)
