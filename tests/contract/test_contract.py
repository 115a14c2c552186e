"""What every backend and codec must do, between two real daemons on a real broker."""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path
from typing import Any

from backends.base import Mode
from sidecar.client import Client
from tests.brokers import BrokerServer
from tests.conftest import Connect
from tests.contract.conftest import Pair, Setup
from tests.utils import DROPPED, metric, publish_frame, run_daemon, wait_for

FEATHERS_EVENTS = ("created", "updated", "patched", "removed", "status-changed")


async def test_events_cross_in_both_directions(pair: Pair, connect: Connect) -> None:
    a = await connect(pair.sock_a, {"client": "app-a"})
    b = await connect(pair.sock_b, {"client": "app-b"})
    for event in FEATHERS_EVENTS:
        context = {"params": {"query": {"x": 1}, "provider": "rest"}, "method": event, "path": "messages"}
        await a.send(publish_frame("messages", event, {"id": 1, "by": "a"}, context=context))
        await b.send(publish_frame("users", event, {"id": 2, "by": "b"}, context=context))
    for receiver, origin, path, by in ((b, pair.a, "messages", "a"), (a, pair.b, "users", "b")):
        events = await receiver.events(len(FEATHERS_EVENTS))
        assert [e["event"] for e in events] == list(FEATHERS_EVENTS)
        for frame in events:
            assert frame["path"] == path
            assert frame["data"] == {"id": frame["data"]["id"], "by": by}
            assert frame["context"]["params"] == {"query": {"x": 1}, "provider": "rest"}
            if pair.a.settings.codec == "syncar":
                assert frame["origin"] == origin.settings.instance_id
            else:
                assert frame["origin"] is None  # feathers-sync's format carries no origin


async def test_welcome_names_the_broker_node_reached(pair: Pair, connect: Connect) -> None:
    a = await connect(pair.sock_a, {})
    if pair.server is None:
        assert "node" not in a.welcome  # the local backend has no node
    else:
        assert a.welcome["node"] == f"127.0.0.1:{pair.server.port}", a.welcome


async def test_unicode_nested_and_large_payloads(pair: Pair, connect: Connect) -> None:
    a = await connect(pair.sock_a, {})
    b = await connect(pair.sock_b, {})
    payloads = [
        {"text": "héllo wörld ✓ 日本語 🚀", "rtl": "مرحبا", "escapes": 'quote " backslash \\ nul \u0000'},
        {"deep": [[{"a": [1, 2, {"b": {"c": [None, True, False, 1.5, -7]}}]}]]},
        {"blob": "x" * (512 * 1024)},
    ]
    for data in payloads:
        await a.send(publish_frame("files", "created", data))
    received = await b.events(len(payloads))
    assert [e["data"] for e in received] == payloads


async def test_per_origin_order_over_10000_events(pair: Pair, connect: Connect) -> None:
    a = await connect(pair.sock_a, {})
    b = await connect(pair.sock_b, {"subscribe": ["counter"]})
    count = 10_000
    batch = 500
    receiving = asyncio.create_task(b.events(count, timeout=30))
    for start in range(0, count, batch):
        await a.send(
            b"".join(
                b'{"type":"publish","path":"counter","event":"tick","data":%d}\n' % i
                for i in range(start, start + batch)
            )
        )
    events = await receiving
    assert [e["data"] for e in events] == list(range(count))


async def test_no_echo_and_exactly_one_copy_locally(pair: Pair, connect: Connect) -> None:
    publisher = await connect(pair.sock_a, {})
    neighbour = await connect(pair.sock_a, {})
    remote = await connect(pair.sock_b, {})
    await publisher.send(publish_frame("messages", "created", "first"))
    await publisher.send(publish_frame("messages", "created", "second"))
    assert [e["data"] for e in await remote.events(2)] == ["first", "second"]
    # B answers after it saw both: by then the broker has also brought A's own two back to A.
    await remote.send(publish_frame("messages", "created", "reply"))
    assert [e["data"] for e in await neighbour.events(3)] == ["first", "second", "reply"]
    assert [e["data"] for e in await publisher.events(1)] == ["reply"]
    if not pair.a.backend.broker_echoes:
        assert metric(pair.a.metrics, DROPPED, reason="echo") == 0  # the broker never sent them back
    else:
        await wait_for(
            lambda: metric(pair.a.metrics, DROPPED, reason="echo") == 2, what="both echoes to be recognised and dropped"
        )


async def test_ack_means_the_broker_accepted(pair: Pair, connect: Connect) -> None:
    a = await connect(pair.sock_a, {})
    b = await connect(pair.sock_b, {})
    for i in range(20):
        await a.send(publish_frame(id=f"evt-{i}", ack=True, data=i))
    acks = [(await a.frame_of("ack"))["id"] for _ in range(20)]
    assert acks == [f"evt-{i}" for i in range(20)]
    assert metric(pair.a.metrics, "syncar_events_sent_total") == 20
    assert [e["data"] for e in await b.events(20)] == list(range(20))


async def test_filters_apply_to_remote_events(pair: Pair, connect: Connect) -> None:
    a = await connect(pair.sock_a, {})
    only_removed = await connect(pair.sock_b, {"subscribe": [{"path": "*", "event": "removed"}]})
    await a.send(publish_frame("messages", "created", 1))
    await a.send(publish_frame("messages", "removed", 2))
    assert [e["data"] for e in await only_removed.events(1)] == [2]


async def test_junk_on_the_channel_is_counted_and_dropped(pair: Pair, connect: Connect) -> None:
    a = await connect(pair.sock_a, {})
    b = await connect(pair.sock_b, {})
    await pair.a.backend.publish(pair.key, [b"\x00\xffnot json", b'{"unrelated": true}', b"[]", b'{"cut'])
    await a.send(publish_frame(data="after the junk"))
    junk = 4
    if pair.a.settings.codec == "feathers-sync":
        # Not JSON nor the start of an object: maybe a binary serializer's (BSON), for the apps' deserialize to read.
        assert (await b.frame_of("event"))["bin"] == base64.b64encode(b"\x00\xffnot json").decode()
        junk = 3
    assert (await b.frame_of("event"))["data"] == "after the junk"
    await wait_for(
        lambda: sum(metric(pair.b.metrics, DROPPED, reason=r) for r in ("malformed", "foreign")) == junk,
        what="the junk to be counted",
    )


async def test_a_publish_resent_with_the_same_id_arrives_once(pair: Pair, connect: Connect) -> None:
    a = await connect(pair.sock_a, {})
    b = await connect(pair.sock_b, {})
    for _ in range(2):  # a client resending after a lost ack
        await a.send(publish_frame(data="once", id="same-id"))
    await a.send(publish_frame(data="next", id="other-id"))
    received = [e["data"] for e in await b.events(2)]
    if pair.a.settings.codec == "syncar":
        assert received == ["once", "next"]
        await wait_for(
            lambda: metric(pair.b.metrics, DROPPED, reason="duplicate") == 1, what="the duplicate to be counted"
        )
    else:  # feathers-sync's format carries no id to compare: both copies go through
        assert received == ["once", "once"]


async def test_app_resumes_across_a_restart_of_its_daemon(
    setup: Setup, broker: BrokerServer | None, sock_dir: Path
) -> None:
    key = f"restart-{uuid.uuid4().hex}"
    settings: dict[str, Any] = {
        "backend": broker.uri if broker else f"local://{key}",
        "codec": setup.codec,
        "key": key,
        "mode": setup.mode,
    }
    sock_a, sock_b = sock_dir / "a.sock", sock_dir / "b.sock"
    received: list[int] = []
    async with run_daemon(sock_a, instance_id=f"a-{key}", **settings), Client(sock_a) as publisher:
        receiver = Client(sock_b, backoff=(0.01, 0.05))
        try:
            async with run_daemon(sock_b, instance_id=f"b-{key}", **settings):
                await receiver.connect()
                for i in range(50):
                    await publisher.publish("p", "e", i, ack=True)
                received += [(await receiver.next_event(timeout=10)).data for _ in range(50)]
            await wait_for(lambda: not receiver.connected, what="the receiver to notice its daemon is gone")
            for i in range(50, 100):  # while B is down
                await publisher.publish("p", "e", i, ack=True)
            async with run_daemon(sock_b, instance_id=f"b-{key}", **settings):
                for i in range(100, 150):
                    await publisher.publish("p", "e", i, ack=True)
                while not received or received[-1] != 149:
                    received.append((await receiver.next_event(timeout=10)).data)
        finally:
            await receiver.close()
    if setup.mode is Mode.DURABLE:
        assert received == list(range(150))  # the broker kept what B missed; nothing twice
        assert receiver.gaps == 0
    else:
        assert received == [*range(50), *range(100, 150)]  # broadcast: missed while away, and told so
        assert receiver.gaps == 1
