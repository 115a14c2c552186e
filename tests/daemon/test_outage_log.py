"""A broker outage in the log: its start once, at most a few summaries with a count, its end once."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.logging import Outage
from tests.brokers import BrokerServer, serve
from tests.utils import RawClient, SpawnedDaemon, wait_for

#: How long the broker stays away: the outage whose log the test reads.
OUTAGE = 5.0
CAP = 0.5


def redis() -> BrokerServer:
    from tests.brokers.redis import RedisServer

    return RedisServer()


def rabbitmq() -> BrokerServer:
    from tests.brokers.rabbitmq import RabbitServer

    return RabbitServer()


def nats() -> BrokerServer:
    from tests.brokers.nats import NatsServer

    return NatsServer()


@pytest.fixture(
    params=[
        pytest.param(make, marks=getattr(pytest.mark, make.__name__), id=make.__name__)
        for make in (redis, rabbitmq, nats)
    ]
)
def server(request: pytest.FixtureRequest) -> Iterator[BrokerServer]:
    """A broker of this test's own, which it kills."""
    yield from serve(request.param())


async def test_an_outage_is_logged_once_then_its_end_once(server: BrokerServer, sock: Path) -> None:
    daemon = SpawnedDaemon(sock, "--reconnect-max-delay", str(CAP), env={"SYNCAR_BACKEND": server.uri})
    try:
        await daemon.ready(timeout=30)
        app = await RawClient.connect(sock, {})
        await asyncio.to_thread(server.kill)
        assert (await app.frame_of("status", timeout=30))["broker"] == "down"
        # The broker stays away for a while: the outage is what this test observes, not a condition to wait for.
        await asyncio.sleep(OUTAGE)
        await asyncio.to_thread(server.start)
        assert (await app.frame_of("status", timeout=30))["broker"] == "up"
        await wait_for(lambda: "reconnected to" in daemon.log, what="the recovery in the log")
        await app.close()
    finally:
        await daemon.stop()
        daemon.kill()
    lines = daemon.log.splitlines()
    name = re.findall(r"starting: .*?, backend (\w+),", daemon.log)[0]
    # The backend's own modules: backends.redis, backends.redis_base, backends.nats_connection...
    mine = [line for line in lines if re.search(rf" backends\.{name}(_\w+)?: ", line)]
    lost = [line for line in mine if "lost" in line]
    back = [line for line in mine if "reconnected to" in line]
    assert len(lost) == 1 and " WARNING " in lost[0], daemon.log
    assert len(back) == 1 and " INFO " in back[0], daemon.log
    # Between the two, during 5 s of retries: at most a couple of lines, whoever writes them (aio-pika's own
    # warning at every attempt is one of those that must not be there).
    during = lines[lines.index(lost[0]) + 1 : lines.index(back[0])]
    noisy = [line for line in during if re.search(r" (WARNING|ERROR) ", line) and "sidecar.relay" not in line]
    assert len(noisy) <= 2, "\n".join(noisy)
    # It kept trying, waiting between CAP / 2 (the jitter) and CAP once the first fast attempts were made.
    found = re.search(r"after ([\d.]+)s \((\d+) (failed )?attempts\)", back[0])
    assert found, back[0]
    seconds, attempts = float(found.group(1)), int(found.group(2))
    assert seconds >= OUTAGE - 0.5, back[0]
    assert OUTAGE / CAP / 2 <= attempts <= seconds / (CAP / 2) + 10, back[0]


async def test_outage_summarises_failed_attempts_with_their_count(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.outage")
    outage = Outage(logger, interval=0.05)
    with caplog.at_level(logging.INFO, logger="tests.outage"):
        outage.began("lost: %s", "connection reset")
        outage.began("lost again: %s", "ignored while the outage goes on")
        attempts = 0

        def summaries() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed")]

        async def fail_until_two_summaries() -> None:
            nonlocal attempts
            while len(summaries()) < 2:
                outage.failed("failed: attempt %d", attempts)
                attempts += 1
                await asyncio.sleep(0.005)

        await asyncio.wait_for(fail_until_two_summaries(), timeout=10)
        assert outage.failures == attempts
        outage.ended("back after %d failures", outage.failures)
        outage.ended("back again: never logged, the outage is over")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "lost: connection reset"
    assert [m for m in messages if m.startswith("lost")] == ["lost: connection reset"]
    held = [int(n) for m in summaries() for n in re.findall(r"\(and (\d+) more like it not logged\)", m)]
    assert len(held) == 2 and all(n >= 1 for n in held), summaries()  # the first attempts were held back, counted
    assert messages[-1] == f"back after {attempts} failures"
    assert sum(1 for m in messages if m.startswith("back")) == 1
