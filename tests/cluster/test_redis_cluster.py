"""syncar on the session's 6-node Redis Cluster (tests/brokers/redis_cluster.py) as a daemon: a start with every
host of its URI down is degraded, then connects in the background once a node is back, in both modes. The backend's
own tests are tests/backends/test_redis_cluster.py; the failovers under load are cases 10-11 of tests/faults/."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backends.redis_streams import stream_key
from tests.brokers import free_port
from tests.brokers.redis_cluster import RedisCluster
from tests.utils import SpawnedDaemon, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.mark.parametrize("mode", ["broadcast", "durable"])
async def test_a_start_with_every_host_down_is_degraded_then_connects(
    redis_cluster: RedisCluster, sock: Path, mode: str
) -> None:
    """As with one host: the daemon starts without the broker, and connects once a node of its URI is back (in
    durable mode, to the master of its stream's slot, which that node names)."""
    master = next(node for node in redis_cluster.nodes.values() if redis_cluster.is_master(node))
    node = redis_cluster.replica_of(master)  # a replica: its death fails nothing over
    node.kill()
    key = f"all-down-{mode}"
    daemon = SpawnedDaemon(
        sock,
        "--backend",
        f"redis+cluster://127.0.0.1:{free_port()},{node.address}",
        "--key",
        key,
        "--mode",
        mode,
        "--instance-id",
        "all-down",
    )
    try:
        await daemon.ready(timeout=30)
        assert "starting without the broker" in daemon.log
        await asyncio.to_thread(redis_cluster.wait_whole)
        await wait_for(lambda: "broker up" in daemon.log, 30, "the daemon to connect in the background")
        where = node if mode == "broadcast" else redis_cluster.owner(stream_key(key, cluster=True))
        assert f"cluster node {where.address}" in daemon.log
    finally:
        await daemon.stop()
        await asyncio.to_thread(redis_cluster.wait_whole)
