"""A Redis Cluster for the tests: six `redis-server --cluster-enabled yes` on loopback (three masters, three
replicas), made a cluster by `redis-cli --cluster create`, started once a session.

Each node listens twice: plain on `port` (`uri`, and every command the tests send) and TLS on `tls_port`
(`tls_uri()`, the cluster's own CA in `certs`; clients must present a certificate it signed). With `tls-cluster yes`
a node announces to each client the ports of its kind: `CLUSTER NODES`/`SLOTS` answer a plain client with the plain
ports and a TLS client with the TLS ones (Redis 7.0), so one cluster serves both and TLS costs no second start. The
bus and replication speak TLS too (`tls-replication yes`: a replica connects to the port its master announces).

Each node has its own temp dir (its `nodes.conf` and append-only file survive a kill, as a real node's disk would)
and its own free bus port (`cluster-port`, so no port + 10000 needs to be free). `cluster-node-timeout` is
NODE_TIMEOUT_MS: a killed master is failed over a second or two later. `fail_over()` kills a master as a crash
would, waits until its replica owns the slots, and starts the old master again (it rejoins as a replica), so the
cluster is whole again for the next test.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from redis.crc import key_slot

from tests.brokers import START_TIMEOUT, free_port, port_open, require_binary
from tests.brokers.certs import Certificates, make_certificates
from tests.brokers.redis import RedisServer, tls_args
from tests.brokers.redis_sentinel import command

NODE_TIMEOUT_MS = 1500
SIZE = 6
PORT_ATTEMPTS = 3


class ClusterNode(RedisServer):
    """One node of the cluster, persistent (durable mode is tested on it), serving plain on `port` and TLS on
    `tls_port` (client certificates required) at once; its bus and replication speak TLS."""

    name = "redis-cluster"

    def __init__(self, certs: Certificates) -> None:
        super().__init__(persistent=True)
        self.bus_port, self.tls_port, self.certs = free_port(), free_port(), certs

    def listen_args(self) -> list[str]:
        return [
            *super().listen_args(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.dir / "nodes.conf"),
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--cluster-port",
            str(self.bus_port),
            "--tls-port",
            str(self.tls_port),
            *tls_args(self.certs),
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-client-cert-file",
            str(self.certs.client_cert),
            "--tls-client-key-file",
            str(self.certs.client_key),
        ]

    def wait_launched(self) -> None:
        """wait_ready(); a node that found one of its three ports taken (free_port() only saw it free: another
        process may bind it before the node does) moves to three others, up to PORT_ATTEMPTS times. The error
        says what the node said: its log goes with its directory at cleanup."""
        for attempt in range(PORT_ATTEMPTS):
            try:
                self.wait_ready()
                return
            except RuntimeError as exc:
                said = " / ".join((self.dir / "server.log").read_text(errors="replace").strip().splitlines()[-2:])
                if attempt + 1 == PORT_ATTEMPTS or "Address already in use" not in said:
                    raise RuntimeError(f"{exc}: {said}") from None
            self.port, self.bus_port, self.tls_port = free_port(), free_port(), free_port()
            self.launch()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_address(self) -> str:
        return f"127.0.0.1:{self.tls_port}"


class RedisCluster:
    """Three masters and a replica of each; `uri` lists the six nodes."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="syncar-redis-cluster-"))
        self.certs = make_certificates(self.dir)
        self.nodes = {node.port: node for node in (ClusterNode(self.certs) for _ in range(SIZE))}
        self.start_seconds = 0.0

    @property
    def uri(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes.values())

    def tls_uri(self, certs: Certificates | None = None) -> str:
        """rediss+cluster:// to the nodes' TLS ports, trusting `certs`' CA and presenting its client certificate
        (the cluster's own by default)."""
        certs = certs or self.certs
        query = urlencode(
            {"ssl_ca_certs": certs.ca, "ssl_certfile": certs.client_cert, "ssl_keyfile": certs.client_key}
        )
        return "rediss+cluster://" + ",".join(node.tls_address for node in self.nodes.values()) + "?" + query

    def start(self) -> None:
        began = time.monotonic()
        for node in self.nodes.values():
            node.launch()
        for node in self.nodes.values():
            node.wait_launched()
        self.nodes = {node.port: node for node in self.nodes.values()}  # a node may have moved
        cli = require_binary("redis-cli")
        addresses = [node.address for node in self.nodes.values()]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        self.wait_whole()
        self.start_seconds = time.monotonic() - began

    def _nodes(self) -> list[list[str]]:
        """CLUSTER NODES, as the first live node sees it: one list of fields per node."""
        for port in self.nodes:
            if port_open(port):
                return [line.split() for line in command(port, "CLUSTER", "NODES")[0].splitlines()]
        raise RuntimeError("no cluster node answers")

    def owner(self, key: str) -> ClusterNode:
        """The master that serves `key`'s slot (a channel's too: sharded pub/sub goes by the same slots)."""
        slot = key_slot(key.encode())
        for fields in self._nodes():
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                first, _, last = span.partition("-")
                if not span.startswith("[") and int(first) <= slot <= int(last or first):
                    return self.nodes[int(fields[1].split(":")[1].split("@")[0])]
        raise RuntimeError(f"no live master serves slot {slot} ({key!r})")

    def is_master(self, node: ClusterNode) -> bool:
        return "role:master" in command(node.port, "INFO", "replication")[0]

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        ids = {fields[1].split("@")[0]: fields[0] for fields in self._nodes()}
        for fields in self._nodes():
            if fields[3] == ids[master.address]:
                return self.nodes[int(fields[1].split(":")[1].split("@")[0])]
        raise RuntimeError(f"{master.address} has no replica")

    def wait_whole(self) -> None:
        """Until every node runs, sees the cluster ok with six nodes and no failure, three masters with a replica
        each, and every replica's link to its master is up."""
        for node in self.nodes.values():
            if node.process is None or node.process.poll() is not None:
                node.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._whole():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster not whole within {START_TIMEOUT}s; see {next(iter(self.nodes))}")
            time.sleep(0.1)

    def _whole(self) -> bool:
        try:
            for port in self.nodes:
                info = command(port, "CLUSTER", "INFO")[0]
                if "cluster_state:ok" not in info or f"cluster_known_nodes:{SIZE}" not in info:
                    return False
                nodes = [line.split() for line in command(port, "CLUSTER", "NODES")[0].splitlines()]
                if any("fail" in fields[2] or fields[7] != "connected" for fields in nodes):
                    return False
                if sum("master" in fields[2] and len(fields) > 8 for fields in nodes) != SIZE // 2:
                    return False
                replication = command(port, "INFO", "replication")[0]
                if "role:slave" in replication and "master_link_status:up" not in replication:
                    return False
                if "role:master" in replication and "connected_slaves:1" not in replication:
                    return False
            return True
        except (OSError, RuntimeError, IndexError):
            return False

    def fail_over(self, node: ClusterNode) -> float:
        """kill -9 `node`, a master; return how long the cluster took to promote its replica; restore the cluster
        (the old master comes back as a replica)."""
        replica = self.replica_of(node)
        node.kill()
        took = self.wait_promoted(replica)
        self.wait_whole()
        return took

    def wait_promoted(self, replica: ClusterNode) -> float:
        """Seconds until `replica` is a master (its master was killed)."""
        began = time.monotonic()
        while not self.is_master(replica):
            if time.monotonic() - began > START_TIMEOUT:
                raise RuntimeError(f"the cluster did not fail over to {replica.address} within {START_TIMEOUT}s")
            time.sleep(0.05)
        return time.monotonic() - began

    def cleanup(self) -> None:
        for node in self.nodes.values():
            node.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
