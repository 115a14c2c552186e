"""RabbitMQ's fast paths (backends/amqp_internals.py) over amqps://, against the session broker's TLS listener.

A publish writes its frames itself when aiormq's writer has nothing queued (`Writer`, with the StreamWriter found in
the writer Task's locals), and whole deliveries and confirms are taken as their bytes arrive (`BulkFrameReceiver`,
standing in for the StreamReader's `feed_data`). Over TLS the StreamWriter's transport and what feeds the
StreamReader are asyncio's SSL layer, not the socket's: each path is counted here as it is taken, so that one
bypassed over TLS, or one that loses or reorders a message there, fails.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic

from backends.amqp import AmqpBackend, AmqpDurableBackend
from backends.amqp_frames import Deliveries
from backends.amqp_internals import Confirms
from backends.base import BackendConfig, Mode
from tests.backends.support import Inbox, Started
from tests.brokers.rabbitmq import RabbitServer
from tests.utils import wait_for

pytestmark = pytest.mark.rabbitmq

ONE_AT_A_TIME = 100
BATCHES = 20
BATCH = 200
LARGE = [30_000, 70_000, 140_000]  # bodies over TLS's 16 KiB records and aiormq's frame size: cut across reads


class Paths(Counter[str]):
    """How many times each path was taken, by the wrappers `watch()` puts around the fast paths and what they avoid."""


def watch(monkeypatch: pytest.MonkeyPatch, marker: bytes) -> Paths:
    """Count, for the frames of messages whose body holds `marker`: the groups written straight to a TLS stream (and
    to any other), those queued for aiormq's writer; the deliveries and confirms taken as they arrived, and those
    aiormq's reader handed over. Made before the backends: Confirms and Deliveries bind their `put` when made."""
    paths = Paths()
    write, put = asyncio.StreamWriter.write, asyncio.Queue.put
    confirms_take, confirms_put = Confirms.take, Confirms.put
    deliveries_take, deliveries_put = Deliveries.take, Deliveries.put

    def writing(writer: asyncio.StreamWriter, data: Any) -> None:
        if marker in data:
            paths["written over tls" if writer.get_extra_info("ssl_object") is not None else "written in clear"] += 1
        write(writer, data)

    async def queueing(queue: asyncio.Queue[Any], item: Any) -> None:
        if isinstance(item, ChannelFrame) and marker in item.payload:
            paths["queued for aiormq's writer"] += 1
        await put(queue, item)

    def taking_confirms(self: Confirms, data: bytes, offset: int, channel: int) -> int:
        taken: int = confirms_take(self, data, offset, channel)
        paths["confirms taken as they arrived"] += taken > offset
        return taken

    async def handing_confirms(self: Confirms, item: tuple[int, Any]) -> None:
        paths["confirms handed by aiormq's reader"] += isinstance(item[1], Basic.Ack)
        await confirms_put(self, item)

    def taking_deliveries(self: Deliveries, data: bytes, offset: int, channel: int) -> int:
        taken: int = deliveries_take(self, data, offset, channel)
        paths["deliveries taken as they arrived"] += taken > offset
        return taken

    async def handing_deliveries(self: Deliveries, item: tuple[int, Any]) -> None:
        paths["deliveries handed by aiormq's reader"] += isinstance(item[1], Basic.Deliver)
        await deliveries_put(self, item)

    monkeypatch.setattr(asyncio.StreamWriter, "write", writing)
    monkeypatch.setattr(asyncio.Queue, "put", queueing)
    monkeypatch.setattr(Confirms, "take", taking_confirms)
    monkeypatch.setattr(Confirms, "put", handing_confirms)
    monkeypatch.setattr(Deliveries, "take", taking_deliveries)
    monkeypatch.setattr(Deliveries, "put", handing_deliveries)
    return paths


@pytest.mark.parametrize("mode", [Mode.BROADCAST, Mode.DURABLE], ids=str)
async def test_the_fast_paths_are_taken_over_tls_and_lose_nothing(
    mode: Mode, rabbitmq_server: RabbitServer, started: Started, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two backends on amqps:// publish to each other at once: one message at a time (each written by its publisher,
    its delivery and its confirm taken as they arrive), then batches, then bodies cut across TLS records. Each side
    gets every message of the other once, in order, and every publish returns (the broker confirmed each batch)."""
    marker = b"tls-fast-path"
    paths = watch(monkeypatch, marker)
    uri = rabbitmq_server.tls_uri
    kind = AmqpDurableBackend if mode is Mode.DURABLE else AmqpBackend
    # Echo off, as the daemon's: in broadcast mode each gets only the other's messages (durable: its own too).
    a = await started(kind(BackendConfig(uri, f"{topic}-a", 10.0, mode=mode, echo=False)))
    b = await started(kind(BackendConfig(uri, f"{topic}-b", 10.0, mode=mode, echo=False)))
    inboxes = {a: Inbox(), b: Inbox()}
    await a.subscribe(topic, inboxes[a])
    await b.subscribe(topic, inboxes[b])
    sent: dict[AmqpBackend, list[bytes]] = {a: [], b: []}

    def got(receiver: AmqpBackend, sender: AmqpBackend) -> list[bytes]:
        name = b" %s " % sender.config.instance_id.encode()
        return [body for body in inboxes[receiver].bodies if name in body]

    async def arrived(receiver: AmqpBackend, sender: AmqpBackend, timeout: float) -> None:
        count = len(sent[sender])
        await wait_for(lambda: len(got(receiver, sender)) >= count, timeout, f"{count} messages from the other side")

    async def one_at_a_time(sender: AmqpBackend, receiver: AmqpBackend) -> None:
        for n in range(ONE_AT_A_TIME):
            body = b"%s %s one %d" % (marker, sender.config.instance_id.encode(), n)
            await sender.publish(topic, [body])
            sent[sender].append(body)
            await arrived(receiver, sender, 10)

    await asyncio.gather(one_at_a_time(a, b), one_at_a_time(b, a))
    one = Paths(paths)
    # Every message went out on a TLS stream, nearly all written by the publisher itself: aiormq's writer wrote those
    # it found an acknowledgement of the same connection's subscription queued before (none would have been over
    # TLS if Writer were bypassed there).
    written, queued = one["written over tls"], one["queued for aiormq's writer"]
    assert written == 2 * ONE_AT_A_TIME and one["written in clear"] == 0, one
    assert written - queued > ONE_AT_A_TIME, one
    # Deliveries and confirms came one at a time, each while aiormq's reader waited: taken as they arrived, or (a
    # confirm the broker sent with a delivery of the other side's, in one TLS record after a frame of another kind)
    # handed over by aiormq's reader. Most are taken: a path bypassed over TLS would take none.
    for path in ("deliveries", "confirms"):
        taken, handed = one[f"{path} taken as they arrived"], one[f"{path} handed by aiormq's reader"]
        assert taken + handed >= 2 * ONE_AT_A_TIME and taken > ONE_AT_A_TIME, (path, one)

    async def in_batches(sender: AmqpBackend) -> None:
        name = sender.config.instance_id.encode()
        for n in range(BATCHES):
            batch = [b"%s %s batch %d.%d" % (marker, name, n, i) for i in range(BATCH)]
            await sender.publish(topic, batch)
            sent[sender] += batch
        for n, size in enumerate(LARGE):
            large = [b"%s %s large %d.%d " % (marker, name, n, i) + b"x" * size for i in range(4)]
            await sender.publish(topic, large)
            sent[sender] += large

    await asyncio.gather(in_batches(a), in_batches(b))
    for sender, receiver in ((a, b), (b, a)):
        await arrived(receiver, sender, 30)
        assert got(receiver, sender) == sent[sender], (len(got(receiver, sender)), len(sent[sender]))
    # The batches, too, went on TLS streams, and their deliveries were read in bulk (taken, or read whole by
    # aiormq's reader from BulkFrameReceiver's large reads).
    assert paths["written in clear"] == 0, paths
    assert paths["deliveries taken as they arrived"] + paths["deliveries handed by aiormq's reader"] >= len(
        sent[a]
    ) + len(sent[b]), paths
