"""syncar on the session's 6-node Redis Cluster (tests/brokers/redis_cluster.py) as a daemon: a start with every
host of its URI down is degraded, then connects in the background once a node is back, in both modes; over TLS
(`rediss+cluster://` to the same nodes' TLS ports), events cross in both modes, `syncar check` names the node and
members, and certificates that do not match are refused for good. The backend's own tests are
tests/backends/test_redis_cluster.py; the failovers under load are cases 10-11 of tests/faults/."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from pathlib import Path

import pytest
from redis.crc import key_slot

from backends.base import BackendConfig, BackendRefused
from backends.redis import RedisBackend
from backends.redis_streams import stream_key
from tests.brokers import free_port
from tests.brokers.certs import make_certificates
from tests.brokers.redis_cluster import RedisCluster
from tests.conftest import Connect
from tests.utils import SpawnedDaemon, publish_frame, syncar, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.mark.parametrize("mode", ["broadcast", "durable"])
async def test_a_start_with_every_host_down_is_degraded_then_connects(
    redis_cluster: RedisCluster, sock: Path, mode: str
) -> None:
    """As with one host: the daemon starts without the broker, and connects once a node of its URI is back, to the
    master of its key's slot (durable mode: of its stream's, the same), which that node names. In broadcast mode,
    to the node that came back if the master did not answer where it said: for its first tens of ms a restarted
    node of this cluster names the others by their TLS ports (from its nodes.conf) to a plain client, and the
    daemon's first retry comes within 0.1 s (2 starts of 2 went there)."""
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
        reached = {m: at for at, m in re.findall(r"connected to cluster node (\S+) \((\w+) mode\)", daemon.log)}
        owner = redis_cluster.owner(key).address
        assert reached[mode] in ({owner, node.address} if mode == "broadcast" else {owner}), daemon.log
    finally:
        await daemon.stop()
        await asyncio.to_thread(redis_cluster.wait_whole)


def tls_node(log: str) -> str:
    """The node a daemon's log says it connected to."""
    found = re.search(r"redis: connected to cluster node (\S+) ", log)
    assert found, log
    return found.group(1)


@pytest.mark.parametrize("mode", ["broadcast", "durable"])
async def test_events_cross_a_tls_cluster(
    redis_cluster: RedisCluster, sock_dir: Path, connect: Connect, mode: str
) -> None:
    """Two daemons on `rediss+cluster://`: each connects by TLS to the master of its key's slot (durable mode: of
    its stream's, the same) that the cluster announced to a TLS client; an event crosses."""
    key = f"tls-{mode}-{uuid.uuid4().hex[:8]}"
    daemons = [
        SpawnedDaemon(
            sock_dir / f"{name}.sock",
            *("--backend", redis_cluster.tls_uri(), "--key", key, "--mode", mode, "--instance-id", f"tls-{name}"),
            name=name,
        )
        for name in ("a", "b")
    ]
    try:
        for daemon in daemons:
            await daemon.ready(timeout=30)
        reached = [tls_node(daemon.log) for daemon in daemons]
        assert key_slot(stream_key(key, cluster=True).encode()) == key_slot(key.encode())
        assert set(reached) == {redis_cluster.owner(key).tls_address}, reached
        receiver = await connect(sock_dir / "b.sock", {"subscribe": ["messages"]})
        sender = await connect(sock_dir / "a.sock", {})
        await sender.send(publish_frame(data={"over": "tls"}))
        event = await receiver.frame_of("event", timeout=10)
        assert event["data"] == {"over": "tls"}
    finally:
        for daemon in daemons:
            await daemon.stop()


def test_check_names_the_tls_node_and_members(redis_cluster: RedisCluster) -> None:
    """The members are those the cluster announces to a TLS client: the TLS ports."""
    result = syncar("check", "--backend", redis_cluster.tls_uri())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    members = ", ".join(sorted(node.tls_address for node in redis_cluster.nodes.values()))
    assert f"cluster members      {members}" in lines, result.stdout
    node = next(line for line in lines if line.startswith("broker node")).split()[-1]
    assert node in members


@pytest.mark.parametrize(
    ("mismatch", "reason"),
    [
        ("ca", "tls: certificate verify failed: self-signed certificate in certificate chain"),
        ("client certificate", "tls: tlsv1 alert unknown ca"),
    ],
    ids=["ca", "client-certificate"],
)
async def test_certificates_that_do_not_match_are_refused_for_good(
    redis_cluster: RedisCluster, sock: Path, tmp_path: Path, mismatch: str, reason: str
) -> None:
    """A CA that did not sign the nodes' certificates (we refuse them), or a client certificate another CA signed
    (the nodes refuse us): the daemon does not start degraded to retry forever, it stops, in one line."""
    other = make_certificates(tmp_path, prefix="other-")
    certs = other if mismatch == "ca" else dataclasses.replace(other, ca=redis_cluster.certs.ca)
    daemon = SpawnedDaemon(sock, "--backend", redis_cluster.tls_uri(certs), "--key", "tls-refused")
    try:
        assert await daemon.exited(timeout=30) == 3, daemon.log
    finally:
        daemon.kill()
    *before, last = daemon.log.splitlines()
    hosts = ",".join(node.tls_address for node in redis_cluster.nodes.values())
    refused = f"cannot start: redis: cannot connect to cluster of {hosts}: {reason}"
    assert last.endswith(f" ERROR   sidecar.commands: {refused}")
    assert not [line for line in before if " INFO " not in line], daemon.log


@pytest.mark.parametrize("mismatch", ["ca", "client-certificate"])
async def test_a_refusal_is_the_reason_whichever_node_is_tried_last(
    redis_cluster: RedisCluster, tmp_path: Path, mismatch: str
) -> None:
    """The URI's nodes are tried from a random one. We refuse one node's certificate, or it refuses ours, and the
    others are down: the refusal is why none could be reached, not the node tried last (a transient failure,
    retried for ever); and the node's alert is told as itself, though it may close the connection before the
    first command (TLS 1.3: the server judges our certificate after our side of the handshake is done)."""
    node = next(iter(redis_cluster.nodes.values()))
    hosts = ",".join([node.tls_address, *(f"127.0.0.1:{free_port()}" for _ in range(3))])
    other = make_certificates(tmp_path, prefix="other-")
    certs = other if mismatch == "ca" else dataclasses.replace(other, ca=redis_cluster.certs.ca)
    uri = f"rediss+cluster://{hosts}?{redis_cluster.tls_uri(certs).partition('?')[2]}"
    reason = (
        "certificate verify failed: self.signed certificate in certificate chain"
        if mismatch == "ca"
        else "tlsv1 alert unknown ca"
    )
    for _ in range(20):  # a node down is tried last in 3 starts of 4; the alert came first in 6 probes of 10
        backend = RedisBackend(BackendConfig(uri, "tls-refused", 5.0))
        try:
            with pytest.raises(BackendRefused, match=f"tls: {reason}$"):
                await backend.start()
        finally:
            await backend.close()
