"""A real nats-server for the tests, with JetStream on (the durable mode needs it).

`NatsTlsServer` is the same server speaking only TLS, with a throwaway CA, a server certificate and a client
certificate it requires (tests/brokers/certs.py). `NatsCluster` is three of them routed to each other.
"""

from __future__ import annotations

import time
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
        """Serving clients, and JetStream current: /healthz says ok once the node has a meta leader and is current
        with it. `js-server-only`: not every stream and consumer the node holds, or one a finished test left behind
        that a restarted node does not bring current (a consumer not current for over 60 s, seen once in CI) keeps
        the next test's cluster from starting; each test makes streams of its own."""
        if not super().ready():
            return False
        health = f"http://127.0.0.1:{self.monitor_port}/healthz?js-server-only=true"
        try:
            with urllib.request.urlopen(health, timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False


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
        current only once a majority runs. Returns once every node serves with JetStream current."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                node.launch()
        for node in self.nodes:
            node.wait_ready()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
