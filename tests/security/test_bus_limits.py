"""What comes from the bus cannot skew the metrics, and what goes on it is never more than the broker passes on.

- A stranger on an unsigned broker sends events with absurd `time` values (1970, an hour ahead): they are delivered
  but not measured in `syncar_relay_seconds`, and counted.
- A Redis whose pub/sub output-buffer limit is smaller than syncar's `max_message_bytes` would disconnect every
  subscribed daemon on one large event: the event is refused with `too_large_for_broker` before it reaches Redis.
- A batch, with its head (a long instance id) and its signature, never exceeds the broker's message size.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
import redis.asyncio

from sidecar.daemon import Daemon
from tests.brokers import BrokerServer, serve
from tests.brokers.redis import RedisServer
from tests.conftest import Connect
from tests.contract.raw import raw_publish
from tests.utils import DROPPED, metric, publish_frame, run_daemon, wait_for

MiB = 1024 * 1024


@pytest.mark.redis
async def test_implausible_remote_times_are_not_measured(
    redis_server: BrokerServer, sock_dir: Path, connect: Connect
) -> None:
    key = f"times-{uuid.uuid4().hex}"
    async with run_daemon(sock_dir / "b.sock", instance_id="b", backend=redis_server.uri, key=key) as b:
        app = await connect(sock_dir / "b.sock", {})
        for n, moment in enumerate([1.0, time.time() + 3600, time.time()]):
            await raw_publish(
                redis_server,
                key,
                orjson.dumps(
                    {
                        "v": 1,
                        "origin": "stranger",
                        "events": [
                            {
                                "id": str(n),
                                "time": moment,
                                "event": "created",
                                "path": "messages",
                                "data": n,
                                "context": None,
                            }
                        ],
                    }
                ),
            )
        assert [e["data"] for e in await app.events(3)] == [0, 1, 2]  # delivered all the same
        assert metric(b.metrics, "syncar_relay_seconds_count") == 1
        assert metric(b.metrics, "syncar_relay_seconds_sum") < 60
        assert metric(b.metrics, "syncar_implausible_times_total") == 2


@pytest.fixture(scope="module")
def small_buffers() -> Iterator[RedisServer]:
    """A Redis that disconnects a pub/sub subscriber whose unsent replies reach 1 MiB."""
    yield from serve(RedisServer())


@pytest.mark.redis
async def test_an_event_over_what_redis_passes_to_subscribers_is_refused(
    small_buffers: RedisServer, sock_dir: Path, connect: Connect
) -> None:
    probe = redis.asyncio.from_url(small_buffers.uri)
    await probe.config_set("client-output-buffer-limit", f"pubsub {MiB} 0 0")
    await probe.aclose()
    key = f"big-{uuid.uuid4().hex}"
    settings = {"backend": small_buffers.uri, "key": key, "max_frame_bytes": 4 * MiB}
    async with (
        run_daemon(sock_dir / "a.sock", instance_id="a", **settings) as a,
        run_daemon(sock_dir / "b.sock", instance_id="b", **settings) as b,
    ):
        app_a = await connect(sock_dir / "a.sock", {})
        app_b = await connect(sock_dir / "b.sock", {})
        await app_a.send(publish_frame(data="x" * (3 * MiB // 2), id="big", ack=True))
        answer = await app_a.frame()
        assert (answer["type"], answer["code"]) == ("nack", "too_large_for_broker"), answer
        assert f"at most {a.outbox.max_event_bytes}" in answer["message"]
        assert a.backend.max_message_bytes == MiB // 4  # a quarter of the limit: room for a few in a buffer
        await app_a.send(publish_frame(data="small", id="small", ack=True))
        assert (await app_a.frame_of("ack"))["id"] == "small"
        assert (await app_b.frame_of("event"))["data"] == "small"
        assert metric(b.metrics, "syncar_backend_reconnects_total") == 0  # B's subscription was never cut


def record_publishes(daemon: Daemon) -> list[bytes]:
    seen: list[bytes] = []
    publish = daemon.backend.publish

    async def recording(topic: str, bodies: Sequence[bytes]) -> None:
        seen.extend(bodies)
        await publish(topic, bodies)

    daemon.backend.publish = recording  # type: ignore[method-assign]
    return seen


async def test_a_batch_with_its_head_and_signature_fits_the_broker(sock_dir: Path, connect: Connect) -> None:
    keys = sock_dir / "keys"
    keys.write_text("signing-key-for-tests-0123456789\n")
    # The longest instance id, each character escaped in JSON (\u0001): a batch's head of over 1,200 bytes.
    async with run_daemon(
        sock_dir / "a.sock", instance_id="\x01" * 200, backend=f"local://{uuid.uuid4().hex}", signing_key_file=keys
    ) as a:
        limit = a.backend.max_message_bytes = 64 * 1024
        wire = record_publishes(a)
        app = await connect(sock_dir / "a.sock", {})
        sizes = [limit - 3000 + step for step in range(0, 2100, 100)]
        for n, size in enumerate(sizes):
            await app.send(publish_frame(data="x" * size, id=str(n), ack=True))
        answers = [await app.frame() for _ in sizes]
        await wait_for(lambda: sum(len(body) for body in wire) > 0, what="a publish")
        assert max(len(body) for body in wire) <= limit
        assert {a["type"] for a in answers} <= {"ack", "nack"} and answers[0]["type"] == "ack"
        assert all(a.get("code") in (None, "too_large_for_broker") for a in answers)


@pytest.mark.redis
async def test_an_event_queued_before_the_broker_limit_went_down_does_not_hold_the_others_back(
    redis_server: BrokerServer, sock_dir: Path, connect: Connect
) -> None:
    key = f"shrunk-{uuid.uuid4().hex}"
    settings = {"backend": redis_server.uri, "key": key}
    async with (
        run_daemon(sock_dir / "a.sock", instance_id="a", **settings) as a,
        run_daemon(sock_dir / "b.sock", instance_id="b", **settings),
    ):
        app_a = await connect(sock_dir / "a.sock", {})
        app_b = await connect(sock_dir / "b.sock", {})
        a.outbox.set_connected(False)  # as if the broker were away: publishes wait
        await app_a.send(publish_frame(data="x" * 100_000, id="big", ack=True))
        await app_a.send(publish_frame(data="small", id="small", ack=True))
        await wait_for(lambda: len(a.outbox) == 2, what="both publishes queued")
        # The broker comes back with a lower limit, as a NATS server restarted with a smaller max_payload does.
        a.backend.max_message_bytes = 64 * 1024
        a.outbox.set_connected(True)
        answers = {frame["id"]: frame for frame in [await app_a.frame(), await app_a.frame()]}
        assert (answers["big"]["type"], answers["big"]["code"]) == ("nack", "too_large_for_broker")
        assert "65536" in answers["big"]["message"]
        assert answers["small"]["type"] == "ack"
        assert (await app_b.frame_of("event"))["data"] == "small"
        assert metric(a.metrics, DROPPED, reason="too_large") == 1
