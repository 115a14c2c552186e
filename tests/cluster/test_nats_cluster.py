"""syncar on a real 3-node NATS cluster (tests/brokers/nats.py NatsCluster, started once a session): the servers the
cluster announces are followed, a start with hosts down picks a live one, durable mode's stream gets `replicas`, a
durable daemon restarted while a node is down keeps its consumer and the node comes back healthy.
The failovers under load, counted, are in tests/faults/test_cluster_nats.py."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import nats
import nats.errors
import pytest

from backends.base import BackendState, Mode
from backends.nats_jetstream import jetstream_name
from tests.backends.support import Started
from tests.brokers import BrokerServer, free_port
from tests.brokers.nats import NatsCluster
from tests.utils import SpawnedDaemon, wait_for

pytestmark = [pytest.mark.nats, pytest.mark.cluster, pytest.mark.timeout(120)]


async def test_servers_the_cluster_announces_are_followed(nats_cluster: NatsCluster, backends: Started) -> None:
    first, *others = nats_cluster.nodes
    backend = await backends.on(first.uri)  # the URI names one node only
    assert backend.node == f"127.0.0.1:{first.port}"
    # nats-py's discovery (always on): the other two come in the INFO of the node we reached.
    await wait_for(
        lambda: {f"127.0.0.1:{n.port}" for n in others} <= set(backend.members),
        10,
        f"the announced servers in {backend.members}",
    )
    try:
        first.kill()
        await wait_for(
            lambda: backend.state is BackendState.CONNECTED and backend.node != f"127.0.0.1:{first.port}",
            30,
            "a reconnect to a node the cluster announced",
        )
        assert backend.node in {f"127.0.0.1:{n.port}" for n in others}
    finally:
        nats_cluster.whole()


async def test_a_start_with_hosts_down_picks_a_live_one(
    nats_cluster: NatsCluster, backends: Started, sock: Path
) -> None:
    down = nats_cluster.nodes[0]
    dead = f"127.0.0.1:{free_port()}"
    uri = f"nats://{dead},{nats_cluster.uri.removeprefix('nats://')}"
    down.kill()
    try:
        for _ in range(3):  # nats-py shuffles the list: each start must land on a live node whatever the order
            backend = await backends.on(uri)
            assert backend.node not in (dead, f"127.0.0.1:{down.port}", None)
        daemon = SpawnedDaemon(sock, "--backend", uri, "--key", "hosts-down", "--require-broker")
        try:
            await daemon.ready(timeout=30)
            reached = re.search(r"nats: connected to 127\.0\.0\.1:(\d+) ", daemon.log)
            assert reached is not None, daemon.log
            assert int(reached.group(1)) in {node.port for node in nats_cluster.nodes[1:]}
        finally:
            await daemon.stop()
    finally:
        nats_cluster.whole()


async def test_durable_stream_gets_the_replicas_of_the_uri(nats_cluster: NatsCluster, backends: Started) -> None:
    topic = f"replicas-{uuid.uuid4().hex[:8]}"
    backend = await backends.on(f"{nats_cluster.uri}?replicas=3", Mode.DURABLE)
    await backend.publish(topic, [b"one"])
    client = await nats.connect(servers=[node.uri for node in nats_cluster.nodes])
    try:
        info = await client.jetstream().stream_info(jetstream_name(topic))
    finally:
        await client.close()
    assert info.config.num_replicas == 3
    assert info.cluster is not None and len(info.cluster.replicas or []) == 2  # a leader and two followers


async def test_replicas_a_single_server_cannot_place_is_one_clear_line(nats_server: BrokerServer, sock: Path) -> None:
    daemon = SpawnedDaemon(
        sock,
        "--backend",
        f"{nats_server.uri}?replicas=3",
        "--mode",
        "durable",
        "--key",
        f"replicas-{uuid.uuid4().hex[:8]}",
        "--instance-id",
        "replicas-test",
    )
    assert await daemon.exited(timeout=30) != 0
    errors = [line for line in daemon.log.splitlines() if "replicas=3" in line]
    assert errors, daemon.log
    assert "replicas > 1 not supported in non-clustered mode" in errors[0], errors
    assert "Traceback" not in daemon.log


async def test_a_start_with_every_host_down_is_degraded_then_connects(nats_cluster: NatsCluster, sock: Path) -> None:
    """As with one host: the daemon starts without the broker and connects in the background once a node is back."""
    node = nats_cluster.nodes[0]
    node.kill()
    daemon = SpawnedDaemon(
        sock, "--backend", f"nats://127.0.0.1:{free_port()},127.0.0.1:{node.port}", "--key", "all-down"
    )
    try:
        await daemon.ready(timeout=30)
        assert "starting without the broker" in daemon.log
        await asyncio.to_thread(nats_cluster.whole)
        await wait_for(lambda: "broker up" in daemon.log, 30, "the daemon to connect in the background")
        assert f"connected to 127.0.0.1:{node.port}" in daemon.log
    finally:
        await daemon.stop()
        nats_cluster.whole()
