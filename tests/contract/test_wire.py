"""Byte for byte: what each codec puts on each broker, and what syncar makes of what others put there."""

from __future__ import annotations

import asyncio

import orjson

from backends.base import Mode
from tests.conftest import Connect
from tests.contract.conftest import Pair
from tests.contract.raw import raw_publish, raw_subscriber
from tests.utils import DROPPED, metric, publish_frame

CONTEXT = {
    "arguments": [{"text": "hi"}, {}],
    "event": "created",
    "result": {"text": "hi", "id": 0},
    "data": {"text": "hi"},
    "params": {"query": {}},
    "path": "messages",
    "method": "create",
    "type": "around",
}


REAL_BROKERS_ONLY = True  # these tests kill or read the broker
MODES = (Mode.BROADCAST,)  # durable mode writes elsewhere than the broadcast channel


async def test_what_goes_on_the_wire(pair: Pair, connect: Connect) -> None:
    assert pair.server is not None
    app = await connect(pair.sock_a, {})
    async with raw_subscriber(pair.server, pair.key) as wire:
        await app.send(publish_frame("messages", "created", {"text": "hi", "id": 0}, context=CONTEXT, id="e1"))
        async with asyncio.timeout(10):
            body = await wire.get()
    if pair.a.settings.codec == "feathers-sync":
        # What feathers-sync's JSON.stringify({event, path, data, context}) produces, to the byte.
        assert body == (
            b'{"event":"created","path":"messages","data":{"text":"hi","id":0},"context":'
            + orjson.dumps(CONTEXT)
            + b"}"
        )
    else:
        batch = orjson.loads(body)
        assert batch["v"] == 1
        assert batch["origin"] == pair.a.settings.instance_id
        [event] = batch["events"]
        assert {k: event[k] for k in ("event", "path", "data", "context")} == {
            "event": "created",
            "path": "messages",
            "data": {"text": "hi", "id": 0},
            "context": CONTEXT,
        }
        assert event["id"][16:] == ".e1"  # the app's id, in its scope (sidecar/dedup.py)


async def test_what_a_foreign_publisher_sends_is_delivered_or_dropped(pair: Pair, connect: Connect) -> None:
    assert pair.server is not None
    app = await connect(pair.sock_a, {})
    feathers_sync_body = orjson.dumps({"event": "patched", "path": "messages", "data": {"id": 3}, "context": CONTEXT})
    await raw_publish(pair.server, pair.key, b"\xde\xad garbage")
    await raw_publish(pair.server, pair.key, b'{"event": "cut')
    await raw_publish(pair.server, pair.key, feathers_sync_body)
    # A marker from B, published after the raw messages were accepted, reaches A after them.
    b = await connect(pair.sock_b, {})
    await b.send(publish_frame("sync", "marker"))
    seen = []
    async with asyncio.timeout(10):
        while (frame := await app.frame_of("event"))["path"] != "sync":
            seen.append(frame)
    if pair.a.settings.codec == "feathers-sync":
        # What is not a JSON object may be a binary serializer's (BSON, MessagePack): the apps' deserialize decides.
        assert [(e["event"], e["path"], e["data"], e.get("bin"), e["origin"]) for e in seen] == [
            ("", "", None, "3q0gZ2FyYmFnZQ==", None),
            ("patched", "messages", {"id": 3}, None, None),
        ]
        assert metric(pair.a.metrics, DROPPED, reason="malformed") == 1
    else:
        assert seen == []  # a feathers-sync message is foreign to the syncar codec
        assert sum(metric(pair.a.metrics, DROPPED, reason=r) for r in ("malformed", "foreign")) == 3
