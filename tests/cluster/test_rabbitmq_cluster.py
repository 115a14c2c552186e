"""syncar on a real 3-node RabbitMQ cluster (tests/brokers/rabbitmq.py RabbitCluster, started once a session): a
start with hosts down picks a live one, a start with all of them down is degraded and connects later, durable mode's
quorum queues have a member on every node. The failovers under load, counted, are in
tests/faults/test_cluster_rabbitmq.py."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import pytest

from backends.amqp_topology import durable_queue_name
from backends.base import Mode
from tests.backends.support import Started
from tests.brokers import free_port
from tests.brokers.rabbitmq import RabbitCluster
from tests.utils import SpawnedDaemon, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.cluster, pytest.mark.timeout(180)]


async def test_a_start_with_hosts_down_picks_a_live_one(
    rabbitmq_cluster: RabbitCluster, backends: Started, sock: Path
) -> None:
    down = rabbitmq_cluster.nodes[0]
    uri = rabbitmq_cluster.uri.replace("@", f"@127.0.0.1:{free_port()},", 1)  # and a host nobody listens on
    await asyncio.to_thread(down.kill)
    live = {node.address for node in rabbitmq_cluster.nodes[1:]}
    try:
        for _ in range(4):  # each starts at a random host: it must land on a live node whatever the start
            backend = await backends.on(uri)
            assert backend.node in live
        daemon = SpawnedDaemon(sock, "--backend", uri, "--key", "hosts-down", "--require-broker")
        try:
            await daemon.ready(timeout=60)
            reached = re.search(r"amqp: connected to (127\.0\.0\.1:\d+) ", daemon.log)
            assert reached is not None and reached.group(1) in live, daemon.log
        finally:
            await daemon.stop()
    finally:
        await asyncio.to_thread(rabbitmq_cluster.whole)


async def test_a_start_with_every_host_down_is_degraded_then_connects(
    rabbitmq_cluster: RabbitCluster, sock: Path
) -> None:
    """As with one host: the daemon starts without the broker and connects in the background once a node is back."""
    node = rabbitmq_cluster.nodes[0]
    await asyncio.to_thread(node.kill)
    uri = f"amqp://guest:guest@127.0.0.1:{free_port()},{node.address}/"
    daemon = SpawnedDaemon(sock, "--backend", uri, "--key", "all-down")
    try:
        await daemon.ready(timeout=60)
        assert "starting without the broker" in daemon.log
        await asyncio.to_thread(rabbitmq_cluster.whole)
        await wait_for(lambda: "broker up" in daemon.log, 60, "the daemon to connect in the background")
        assert f"amqp: connected to {node.address} " in daemon.log
        assert "guest:guest" not in daemon.log
    finally:
        await daemon.stop()
        await asyncio.to_thread(rabbitmq_cluster.whole)


@pytest.mark.parametrize(
    ("query", "expected"), [("", "quorum"), ("?queue_type=quorum", "quorum"), ("?queue_type=classic", "classic")]
)
async def test_durable_queues_on_a_host_list_are_quorum_queues_with_a_member_on_every_node(
    rabbitmq_cluster: RabbitCluster, backends: Started, query: str, expected: str
) -> None:
    """A URI that lists several hosts is a cluster: quorum queues unless the URI says otherwise (one host: classic,
    tests/backends/test_amqp_durable.py)."""
    topic, instance = f"quorum-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    backend = await backends.on(f"{rabbitmq_cluster.uri}{query}", Mode.DURABLE, instance)

    async def handler(_message: object) -> None:
        return None

    await backend.subscribe(topic, handler)
    name = durable_queue_name(topic, instance)
    rows = await asyncio.to_thread(rabbitmq_cluster.nodes[0].list, "queues", "name", "type", "members", "leader")
    (row,) = [row for row in rows if row["name"] == name]
    assert row["type"] == expected
    if expected == "quorum":
        assert sorted(row["members"]) == sorted(node.node for node in rabbitmq_cluster.nodes)
        assert row["leader"] in row["members"]
