"""Durable mode with signing: an instance away for longer than `--signing-window` still gets its whole backlog, and
a stranger who re-publishes a captured signed message on the broker still gets it rejected.

The window is 2 s here (the smallest allowed) and instance B stays away for more than twice that, on every
broker's durable path. And a publish the outbox retries after the broker stalled for longer than the window goes
out signed anew, not with the time of its first attempt.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis.asyncio

from backends import load_backend
from backends.base import BackendConfig, Mode
from sidecar.client import Client
from sidecar.daemon import Daemon
from tests.brokers import BrokerServer
from tests.conftest import Connect
from tests.utils import DROPPED, RawClient, metric, publish_frame, run_daemon, wait_for

KEY = "signing-key-for-tests-0123456789"
WINDOW = 2.0
BATCH = 10


@pytest.fixture(params=["redis", "rabbitmq", "nats"])
def broker(request: pytest.FixtureRequest) -> BrokerServer:
    server: BrokerServer = request.getfixturevalue(f"{request.param}_server")
    return server


def record_publishes(daemon: Daemon) -> list[bytes]:
    """What daemon A hands its broker, as a stranger reading the broker would see it."""
    seen: list[bytes] = []
    publish = daemon.backend.publish

    async def recording(topic: str, bodies: Sequence[bytes]) -> None:
        await publish(topic, bodies)
        seen.extend(bodies)

    daemon.backend.publish = recording  # type: ignore[method-assign]
    return seen


async def republish(broker: BrokerServer, key: str, body: bytes) -> None:
    """A stranger with a plain broker client publishes `body` on the durable path again."""
    backend = load_backend(broker.uri, Mode.DURABLE)(BackendConfig(broker.uri, "stranger", mode=Mode.DURABLE))
    await backend.start()
    try:
        await backend.publish(key, [body])
    finally:
        await backend.close()


async def acked(app: RawClient, data: list[str]) -> None:
    for i, value in enumerate(data):
        await app.send(publish_frame(data=value, id=f"{value}-{i}", ack=True))
    for _ in data:
        await app.frame_of("ack")


async def received_until(app: Client, last: str) -> list[str]:
    """The data of the events `app` gets, up to `last`, or up to a 10 s silence."""
    seen: list[str] = []
    while not seen or seen[-1] != last:
        try:
            seen.append((await app.next_event(timeout=10)).data)
        except TimeoutError:
            break
    return seen


async def test_backlog_older_than_the_window_arrives_and_a_replay_does_not(
    broker: BrokerServer, sock_dir: Path, connect: Connect
) -> None:
    keys = sock_dir / "keys"
    keys.write_text(KEY + "\n")
    key = f"backlog-{uuid.uuid4().hex}"
    settings = {
        "backend": broker.uri,
        "key": key,
        "mode": Mode.DURABLE,
        "signing_key_file": keys,
        "signing_window": WINDOW,
    }
    sock_b = sock_dir / "b.sock"
    async with run_daemon(sock_dir / "a.sock", instance_id="a", **settings) as a:
        wire = record_publishes(a)
        app_a = await connect(sock_dir / "a.sock", {})
        async with run_daemon(sock_b, instance_id="b", **settings):
            app_b = Client(sock_b, name="b", backoff=(0.05, 0.2))
            await app_b.connect()
        # B is away. A publishes, a window apart, and a stranger re-publishes A's first message after that.
        first_sent = time.time()
        await acked(app_a, ["old"] * BATCH)
        captured = wire[0]
        await wait_for(lambda: time.time() > first_sent + WINDOW + 1, what="a window to pass")
        await acked(app_a, ["newer"] * BATCH)
        await republish(broker, key, captured)
        await acked(app_a, ["last"])
        away_until = time.time() + WINDOW + 1
        await wait_for(lambda: time.time() > away_until, what="B to be away longer than the window")
        async with run_daemon(sock_b, instance_id="b", **settings) as b:
            try:
                seen = await received_until(app_b, "last")
                assert seen == ["old"] * BATCH + ["newer"] * BATCH + ["last"]
                await wait_for(
                    lambda: sum(metric(b.metrics, DROPPED, reason=r) for r in ("stale", "replayed")) == 1,
                    what="the replay rejected",
                )
            finally:
                await app_b.close()


@pytest.mark.redis
async def test_a_publish_retried_after_a_stall_longer_than_the_window_is_signed_again(
    redis_server: BrokerServer, sock_dir: Path, connect: Connect
) -> None:
    keys = sock_dir / "keys"
    keys.write_text(KEY + "\n")
    key = f"stall-{uuid.uuid4().hex}"
    settings = {"key": key, "signing_key_file": keys, "signing_window": WINDOW}
    probe = redis.asyncio.from_url(redis_server.uri)
    # A gives up on a publish Redis does not answer within 0.5 s, and the outbox tries again.
    async with (
        run_daemon(sock_dir / "a.sock", instance_id="a", backend=f"{redis_server.uri}?socket_timeout=0.5", **settings),
        run_daemon(sock_dir / "b.sock", instance_id="b", backend=redis_server.uri, **settings) as b,
    ):
        app_a = await connect(sock_dir / "a.sock", {})
        app_b = await connect(sock_dir / "b.sock", {})
        try:
            # Redis holds every write for twice the window; A's first attempt is signed before that.
            await probe.client_pause(int(2 * WINDOW * 1000), all=False)  # writes only
            await acked(app_a, ["held"])
            assert (await app_b.frame_of("event"))["data"] == "held"
            assert metric(b.metrics, DROPPED, reason="stale") <= 1  # a first attempt Redis ran after all
        finally:
            await probe.client_unpause()
            await probe.aclose()
