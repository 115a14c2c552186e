"""A real nats-server for the tests, with JetStream on (the durable mode needs it).

`NatsTlsServer` is the same server speaking only TLS, with a throwaway CA, a server certificate and a client
certificate it requires (tests/brokers/certs.py).
"""

from __future__ import annotations

from urllib.parse import urlencode

from tests.brokers import BrokerServer, require_binary
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
        query = urlencode({"tls_ca": self.certs.ca, "tls_cert": self.certs.client_cert,
                           "tls_key": self.certs.client_key})
        return f"tls://127.0.0.1:{self.port}?{query}"

    def command(self) -> list[str]:
        return [*super().command(), "--tlscert", str(self.certs.server_cert), "--tlskey", str(self.certs.server_key),
                "--tlscacert", str(self.certs.ca), "--tlsverify"]
