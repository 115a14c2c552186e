"""A stranger on a shared broker publishes forged, unsigned, tampered and replayed messages straight to it:
every one is rejected, counted by reason, and no app ever sees one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from sidecar.daemon import Daemon
from tests.brokers import BrokerServer
from tests.conftest import Connect
from tests.contract.raw import raw_publish, raw_subscriber
from tests.utils import DROPPED, metric, publish_frame, run_daemon, wait_for

KEY = "signing-key-for-tests-0123456789"


@pytest.fixture(params=["redis", "rabbitmq", "nats"])
def broker(request: pytest.FixtureRequest) -> BrokerServer:
    server: BrokerServer = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture
async def signed_pair(broker: BrokerServer, sock_dir: Path) -> AsyncIterator[tuple[str, Path, Path, Daemon]]:
    keys = sock_dir / "keys"
    keys.write_text(KEY + "\n")
    key = f"signed-{uuid.uuid4().hex}"
    settings = {"backend": broker.uri, "key": key, "signing_key_file": keys}
    async with (
        run_daemon(sock_dir / "a.sock", instance_id="a", **settings),
        run_daemon(sock_dir / "b.sock", instance_id="b", **settings) as b,
    ):
        yield key, sock_dir / "a.sock", sock_dir / "b.sock", b


async def test_injected_messages_are_all_rejected(
    broker: BrokerServer, signed_pair: tuple[str, Path, Path, Daemon], connect: Connect
) -> None:
    key, sock_a, sock_b, daemon_b = signed_pair
    a = await connect(sock_a, {})
    b = await connect(sock_b, {})

    # A genuine event, captured off the wire by the stranger.
    async with raw_subscriber(broker, key) as wire:
        await a.send(publish_frame("messages", "created", "genuine"))
        async with asyncio.timeout(10):
            captured = await wire.get()
    assert (await b.frame_of("event"))["data"] == "genuine"

    forged_batch = orjson.dumps(
        {
            "v": 1,
            "origin": "evil",
            "events": [
                {"id": "x", "time": 1.0, "event": "removed", "path": "users", "data": "all of them", "context": None}
            ],
        }
    )
    head, _, body = captured.partition(b"\n")
    attacks = {
        "unsigned": forged_batch,
        "unknown_key": b"syncar-sig1 deadbeef 1 00 " + b"0" * 64 + b"\n" + forged_batch,
        "bad_signature": head + b"\n" + body.replace(b"genuine", b"tampered"),
        "replayed": captured,
    }
    for attack in attacks.values():
        await raw_publish(broker, key, attack)
    await a.send(publish_frame("messages", "created", "after the attack"))
    assert (await b.frame_of("event"))["data"] == "after the attack"  # nothing forged came before it

    for reason in attacks:
        await wait_for(
            lambda: metric(daemon_b.metrics, DROPPED, reason=reason) == 1,  # noqa: B023 - awaited at once
            what=f"a {reason} drop",
        )
