"""A real nats-server for the tests, with JetStream on (the durable mode needs it).

`NatsTlsServer` is the same server speaking only TLS, with a throwaway CA, a server certificate and a client
certificate it requires (tests/brokers/certs.py). `NatsCluster` is three of them routed to each other.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

from tests.brokers import BrokerServer, free_port, require_binary
from tests.brokers.certs import make_certificates


class NatsServer(BrokerServer):
    name = "nats"

    def __init__(self) -> None:
        self.binary = require_binary("nats-server")
        super().__init__()

    @property
    def uri(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # JetStream's store lives in this server's temp dir, so a restart keeps streams as a real crash would.
        return [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir / "js")]


class NatsTlsServer(NatsServer):
    """nats-server with TLS only; clients must present a certificate signed by the test CA."""

    name = "nats-tls"

    def __init__(self) -> None:
        super().__init__()
        self.certs = make_certificates(self.dir)

    @property
    def uri(self) -> str:
        query = urlencode(
            {"tls_ca": self.certs.ca, "tls_cert": self.certs.client_cert, "tls_key": self.certs.client_key}
        )
        return f"tls://127.0.0.1:{self.port}?{query}"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--tlscert",
            str(self.certs.server_cert),
            "--tlskey",
            str(self.certs.server_key),
            "--tlscacert",
            str(self.certs.ca),
            "--tlsverify",
        ]


class NatsClusterNode(NatsServer):
    """One server of a `NatsCluster`: its own store, a route to every other node, a monitoring port."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.route_port = free_port()
        self.monitor_port = free_port()
        self.routes: list[int] = []  # the other nodes' route ports, set by the cluster
        self.health = "not started"  # what /healthz said last

    def command(self) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in self.routes)
        return [
            *super().command(),
            "-n",
            f"n{self.index}",
            "-m",
            str(self.monitor_port),
            "--cluster_name",
            "syncar",
            "--cluster",
            f"nats://127.0.0.1:{self.route_port}",
            "--routes",
            routes,
        ]

    def ready(self) -> bool:
        """Serving clients, and JetStream whole on this node: /healthz says ok once the node has a meta leader, is
        current with it, and every stream and consumer it keeps a replica of is current. What it said last is in
        `health`, for the failure's message.

        A test that kills a node deletes its stream before the node comes back (tests/faults/test_cluster_nats.py,
        `clear`): nats-server before 2.10.26 (Debian's is 2.9.10) brings back a consumer that was deleted and made
        again while the node was down (as a daemon's resume does) with its old raft group once the others have
        snapshotted their metadata, and says it is not current until the consumer is deleted (nats-server #6507)."""
        if not super().ready():
            self.health = "not accepting clients yet"
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1) as answer:
                self.health = said(answer.read())
                return bool(answer.status == 200)
        except urllib.error.HTTPError as refusal:  # 503, with JetStream's reason
            with refusal:
                self.health = said(refusal.read())
            return False
        except OSError as exc:
            self.health = f"no answer from /healthz: {exc}"
            return False

    def wait_ready(self) -> None:
        try:
            super().wait_ready()
        except RuntimeError as exc:
            raise RuntimeError(f"node n{self.index}, whose /healthz last said {self.health!r}: {exc}") from None


def said(body: bytes) -> str:
    """The reason in a /healthz answer (`{"status":"unavailable","error":"JetStream consumer ..."}`), or its body."""
    text = body.decode(errors="replace").strip()
    try:
        answer = json.loads(text)
    except ValueError:
        return text
    return str(answer.get("error") or answer.get("status")) if isinstance(answer, dict) else text


class NatsCluster:
    """Three nats-server -js routed to each other on loopback, each with its own store; started once a session."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [NatsClusterNode(i + 1) for i in range(size)]
        for node in self.nodes:
            node.routes = [other.route_port for other in self.nodes if other is not node]
        self.start_seconds = 0.0

    @property
    def uri(self) -> str:
        return "nats://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def node_at(self, address: str) -> NatsClusterNode:
        """The node a daemon names in `syncar_broker_node_info` or a `status` frame (`127.0.0.1:port`)."""
        return next(node for node in self.nodes if address == f"127.0.0.1:{node.port}")

    def start(self) -> None:
        began = time.monotonic()
        self.whole()
        self.start_seconds = time.monotonic() - began

    def whole(self) -> None:
        """Start every node not running (all at first, those a test killed later), together: a node's JetStream is
        current only once a majority runs. Returns once every node serves with JetStream current, every stream and
        consumer included; raises, naming the node and what its /healthz said, if one is not within START_TIMEOUT."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                node.launch()
        for node in self.nodes:
            node.wait_ready()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
