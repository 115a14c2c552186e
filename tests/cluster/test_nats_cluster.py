"""syncar on a real 3-node NATS cluster (tests/brokers/nats.py NatsCluster, started once a session): the servers the
cluster announces are followed, a start with hosts down picks a live one, durable mode's stream gets `replicas`, a
durable daemon restarted while a node is down keeps its consumer and the node comes back healthy.
The failovers under load, counted, are in tests/faults/test_cluster_nats.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js import api

from backends.base import BackendState, BackendUnavailable, Mode
from backends.nats_jetstream import jetstream_name
from tests.backends.support import Inbox, Started, publish_until_accepted
from tests.brokers import BrokerServer, free_port
from tests.brokers.nats import NatsCluster
from tests.utils import SpawnedDaemon, eventually, wait_for

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


#: Any JetStream deletion this long after the nodes' last metadata snapshot makes them take another.
SNAPSHOT_GAP = 2.5


async def test_a_durable_restart_while_a_node_is_down_leaves_every_node_healthy(
    nats_cluster: NatsCluster, backends: Started
) -> None:
    """A daemon restarted (nothing left unacknowledged) while a node is down keeps its consumer, so the node comes
    back to the consumer's own raft group. Were the consumer deleted and made again, nats-server before 2.10.26
    (#6507) would bring the node back to the old group once the live nodes had snapshotted their metadata (the
    deletion after SNAPSHOT_GAP forces one), and its /healthz would say the consumer is not current."""
    topic, instance = f"restart-{uuid.uuid4().hex[:8]}", f"r-{uuid.uuid4().hex[:8]}"
    stream, consumer = jetstream_name(topic), jetstream_name(instance)
    uri = f"{nats_cluster.uri}?replicas=3"
    victim = nats_cluster.nodes[0]
    survivors = [node.uri for node in nats_cluster.nodes[1:]]
    sender = await backends.on(uri, Mode.DURABLE)
    receiver = await backends.on(uri, Mode.DURABLE, instance)
    inbox = Inbox()
    await receiver.subscribe(topic, inbox)
    for n in range(5):
        await sender.publish(topic, [b"%d" % n])
    assert await inbox.wait(5) == [b"%d" % n for n in range(5)]
    client = await nats.connect(servers=survivors)
    js = client.jetstream(timeout=2)
    try:
        await js.add_consumer(stream, api.ConsumerConfig(durable_name="other", ack_policy=api.AckPolicy.EXPLICIT))

        async def all_acknowledged() -> bool:
            info: api.ConsumerInfo = await js.consumer_info(stream, consumer)  # unannotated in nats-py
            return info.num_ack_pending == 0

        await eventually(all_acknowledged, 10, "the acknowledgements of 0-4")
        created = (await js.consumer_info(stream, consumer)).created
        await receiver.close()
        await asyncio.to_thread(victim.kill)
        for n in range(5, 10):  # while the receiver is away
            await publish_until_accepted(sender, topic, b"%d" % n, timeout=30)
        again = Inbox()
        restarted = await backends.on(uri, Mode.DURABLE, instance)

        async def subscribed() -> bool:  # a request made while the cluster elects a leader goes unanswered
            try:
                await restarted.subscribe(topic, again)
            except BackendUnavailable:
                return False
            return True

        await eventually(subscribed, 30, "the restarted receiver's subscription")
        assert await again.wait(5, 30) == [b"%d" % n for n in range(5, 10)]
        assert (await js.consumer_info(stream, consumer)).created == created  # kept, not made again
        await asyncio.sleep(SNAPSHOT_GAP)
        await js.delete_consumer(stream, "other")  # the live nodes snapshot their metadata
        await asyncio.to_thread(victim.launch)
        try:
            await eventually(lambda: asyncio.to_thread(victim.ready), 30, f"node n{victim.index} healthy")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (its /healthz said {victim.health!r})") from None
        await sender.publish(topic, [b"10"])
        assert await again.wait(6, 10) == [b"%d" % n for n in range(5, 11)]  # nothing twice, nothing lost
    finally:
        with contextlib.suppress(nats.errors.Error):
            await js.delete_stream(stream)
        await client.close()
        await asyncio.to_thread(nats_cluster.whole)
