"""One app cannot make another app's events vanish on the other instances by publishing with the ids it uses.

App V and app E share daemon A; app W listens on daemon B, through the Python client (which de-duplicates too).
E publishes first with the ids V is about to use: the same ids by accident, or ids predicted from what V
published before (the Node plugin's old `<client_id>-<n>`, syncar's old automatic `<prefix>-<n>`). Every event
V published must still reach W, once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.client import Client
from tests.brokers import BrokerServer
from tests.conftest import Connect
from tests.utils import RawClient, publish_frame, run_daemon

COUNT = 200  # V's events after E's flood
PREDICTED = 1000  # ids E publishes ahead of V


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def instances(request: pytest.FixtureRequest, sock_dir: Path) -> AsyncIterator[tuple[Path, Client]]:
    """Daemon A's socket, and app W on daemon B."""
    key = f"identity-{uuid.uuid4().hex}"
    if request.param == "local":
        uri = f"local://{key}"
    else:
        server: BrokerServer = request.getfixturevalue("redis_server")
        uri = server.uri
    async with contextlib.AsyncExitStack() as stack:
        for name in ("a", "b"):
            await stack.enter_async_context(
                run_daemon(sock_dir / f"{name}.sock", instance_id=name, backend=uri, key=key)
            )
        w = await stack.enter_async_context(Client(sock_dir / "b.sock", name="w"))
        yield sock_dir / "a.sock", w


async def arrivals_at(w: Client, marker: str) -> list[str]:
    """The data of every event W gets up to V's `marker` (events from one origin keep their order)."""
    seen: list[str] = []
    while True:
        event = await w.next_event(timeout=10)
        if event.data == marker:
            return seen
        seen.append(event.data)


def lines(frames: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(publish_frame(**frame)) + b"\n" for frame in frames)


async def acked(app: RawClient, frames: list[dict[str, Any]]) -> None:
    """Publish `frames` in one write and wait for all their acks."""
    await app.send(lines(frames))
    acks = [await app.frame_of("ack") for _ in frames]
    assert [a["id"] for a in acks] == [f["id"] for f in frames]


async def test_same_ids_by_accident(instances: tuple[Path, Client], connect: Connect) -> None:
    sock_a, w = instances
    v = await connect(sock_a, {"client": "v"})
    e = await connect(sock_a, {"client": "e", "subscribe": []})
    await acked(e, [{"data": "e", "id": f"order-{i}", "ack": True} for i in range(COUNT)])
    await acked(
        v,
        [{"data": "v", "id": f"order-{i}", "ack": True} for i in range(COUNT)]
        + [{"data": "done", "id": "done", "ack": True}],
    )
    seen = await arrivals_at(w, "done")
    assert (seen.count("e"), seen.count("v")) == (COUNT, COUNT)


async def test_ids_predicted_from_what_v_published(instances: tuple[Path, Client], connect: Connect) -> None:
    sock_a, w = instances
    # V names its events the way the Node plugin did, `<client_id>-<n>`, and leaves some ids to syncar.
    v = await connect(sock_a, {"client": "v", "client_id": "v-client-id", "subscribe": []})
    e = await connect(sock_a, {"client": "e"})
    await acked(v, [{"data": "v", "id": "v-client-id-1", "ack": True}])
    await v.send(publish_frame(data="v"))
    # E reads both ids off the events it gets and publishes the next PREDICTED of each first.
    seen_ids = [event["id"] for event in await e.events(2)]
    for seen_id in seen_ids:
        prefix = seen_id.rstrip("0123456789")
        number = int(seen_id[len(prefix) :])
        await acked(e, [{"data": "e", "id": f"{prefix}{number + i}", "ack": True} for i in range(1, PREDICTED + 1)])
    await acked(v, [{"data": "v", "id": f"v-client-id-{i}", "ack": True} for i in range(2, COUNT + 2)])
    await v.send(lines([{"data": "v"}] * COUNT))
    await acked(v, [{"data": "done", "id": "done", "ack": True}])
    seen = await arrivals_at(w, "done")
    assert (seen.count("e"), seen.count("v")) == (2 * PREDICTED, 2 + 2 * COUNT)


async def test_a_resend_by_the_same_client_is_still_delivered_once(
    instances: tuple[Path, Client], connect: Connect
) -> None:
    sock_a, w = instances
    hello = {"client": "v", "client_id": "v-secret-0123456789abcdef", "subscribe": []}
    first = await connect(sock_a, hello)
    await acked(first, [{"data": "v", "id": "once", "ack": True}])
    await first.close()
    # The ack was lost, say: the app reconnects with the same client_id and sends the event again.
    again = await connect(sock_a, hello)
    await acked(again, [{"data": "v", "id": "once", "ack": True}, {"data": "done", "id": "done", "ack": True}])
    assert await arrivals_at(w, "done") == ["v"]
