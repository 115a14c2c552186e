"""A stranger on an unsigned broker cannot make a daemon keep long strings (review21b, finding 5).

A batch's `origin` and `run` are kept by the gap tracker (4,096 keys) and the relay's origins' JSON (1,024), an
announcement's `instance`, `run` and `version` by the peer table (1,024 peers) and served as /metrics labels: tables
bounded in entries, not in bytes. 24 valid, empty batches each with a different 1 MiB origin held 48 MiB (full tables:
~5 GiB). Each of these strings is at most MAX_ID_LENGTH (256) characters on the bus; a message with a longer one is
malformed, dropped and counted as any malformed message is. One at the limit is taken.
"""

from __future__ import annotations

import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from sidecar import MAX_ID_LENGTH
from sidecar.daemon import Daemon
from sidecar.fleet import peers_topic
from tests.brokers import BrokerServer
from tests.conftest import Connect
from tests.contract.raw import raw_publish
from tests.utils import DROPPED, metric, run_daemon, wait_for

MiB = 1024 * 1024
MESSAGES = 24
LONGEST = "x" * MAX_ID_LENGTH


def instances(daemon: Daemon) -> list[str]:
    """The instances in the daemon's peer table, itself first, as `GET /peers` lists them."""
    return [row["instance"] for row in cast(list[dict[str, str]], daemon.fleet.describe()["peers"])]


def batch(origin: str, run: str, events: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"v": 1, "origin": origin, "run": run, "seq": 5, "events": events})


@pytest.mark.redis
@pytest.mark.usefixtures("traced")
async def test_a_batch_with_a_long_origin_or_run_is_dropped_as_malformed(
    redis_server: BrokerServer, sock: Path, connect: Connect
) -> None:
    key = f"origins-{uuid.uuid4().hex}"
    async with run_daemon(sock, instance_id="b", backend=redis_server.uri, key=key) as b:
        app = await connect(sock, {})
        before = tracemalloc.get_traced_memory()[0]
        for n in range(MESSAGES):  # a different long origin each, or a long run
            origin, run = (f"o{n}-" + "x" * MiB, "r") if n % 2 else (f"o{n}", f"r{n}-" + "x" * MiB)
            await raw_publish(redis_server, key, batch(origin, run, []))
        # Then one at the limit, with an event: once it is delivered, every batch before it was heard.
        event = {"id": "1", "time": time.time(), "event": "created", "path": "messages", "data": 1, "context": None}
        await raw_publish(redis_server, key, batch(LONGEST, LONGEST, [event]))
        delivered = await app.frame_of("event")
        assert (delivered["origin"], delivered["data"]) == (LONGEST, 1)
        grown = tracemalloc.get_traced_memory()[0] - before
        assert grown < 8 * MiB, f"{grown / MiB:.0f} MiB kept after {MESSAGES} batches with 1 MiB origins or runs"
        assert metric(b.metrics, DROPPED, reason="malformed") == MESSAGES


@pytest.mark.redis
async def test_an_announcement_with_a_long_string_is_dropped_as_malformed(
    redis_server: BrokerServer, sock: Path
) -> None:
    key = f"announcements-{uuid.uuid4().hex}"
    fields = {"v": 1, "version": "0.1.0", "codec": "syncar", "mode": "broadcast", "seq": 0, "interval": 5.0}
    long = "x" * (MAX_ID_LENGTH + 1)
    async with run_daemon(sock, instance_id="b", backend=redis_server.uri, key=key) as b:
        rejected = "syncar_announcements_rejected_total"
        for n, name in enumerate(["instance", "run", "version", "codec", "mode"]):
            strings = {"instance": f"peer-{n}", "run": "r", name: long}
            await raw_publish(redis_server, peers_topic(key), orjson.dumps({**fields, **strings, "started": 1.0}))
        # Then one at the limit: once it is in the table, every one before it was heard.
        limit = {"instance": LONGEST, "run": LONGEST, "version": LONGEST, "started": 1.0}
        await raw_publish(redis_server, peers_topic(key), orjson.dumps({**fields, **limit}))
        await wait_for(lambda: LONGEST in instances(b), what="the announcement at the limit")
        assert instances(b) == ["b", LONGEST]
        assert metric(b.metrics, rejected, reason="malformed") == 5
