"""A real redis-server for the tests: loopback only, its files in a temp dir, no persistence unless asked.

`RedisServer(persistent=True)` keeps an append-only file with `appendfsync always` in its temp dir, which
restart() keeps, as durable mode needs: every write Redis has answered survives a SIGKILL.

`RedisTlsServer` is the same server speaking only TLS, with a throwaway CA, a
server certificate and a client certificate (tests/brokers/certs.py), so
`rediss://` and its URI options are tested against the real thing.
"""

from __future__ import annotations

from urllib.parse import urlencode

from tests.brokers import BrokerServer, require_binary
from tests.brokers.certs import Certificates, make_certificates


class RedisServer(BrokerServer):
    name = "redis"

    def __init__(self, persistent: bool = False) -> None:
        self.binary = require_binary("redis-server")
        self.persistent = persistent
        super().__init__()

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        return [
            self.binary,
            *self.listen_args(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *persistence,
            "--dir",
            str(self.dir),
            "--logfile",
            "",
            "--daemonize",
            "no",
        ]

    def listen_args(self) -> list[str]:
        return ["--port", str(self.port)]


def tls_args(certs: Certificates, *, auth_clients: bool = True) -> list[str]:
    """redis-server's TLS arguments: its certificate and key, the CA it trusts and, with `auth_clients`, a client
    must present a certificate that CA signed. Which ports speak TLS is the caller's."""
    return [
        "--tls-cert-file",
        str(certs.server_cert),
        "--tls-key-file",
        str(certs.server_key),
        "--tls-ca-cert-file",
        str(certs.ca),
        "--tls-auth-clients",
        "yes" if auth_clients else "no",
    ]


class RedisTlsServer(RedisServer):
    """redis-server with only a TLS port; with `auth_clients` (the default), clients must present a certificate
    signed by the test CA; `server_expired` gives it a certificate that expired yesterday."""

    name = "redis-tls"

    def __init__(self, *, auth_clients: bool = True, server_expired: bool = False) -> None:
        super().__init__()
        self.auth_clients = auth_clients
        self.certs = make_certificates(self.dir, server_expired=server_expired)
        self.ca, self.server_cert, self.server_key = self.certs.ca, self.certs.server_cert, self.certs.server_key
        self.client_cert, self.client_key = self.certs.client_cert, self.certs.client_key

    @property
    def uri(self) -> str:
        query = urlencode({"ssl_ca_certs": self.ca, "ssl_certfile": self.client_cert, "ssl_keyfile": self.client_key})
        return f"rediss://127.0.0.1:{self.port}/0?{query}"

    def listen_args(self) -> list[str]:
        return ["--port", "0", "--tls-port", str(self.port), *tls_args(self.certs, auth_clients=self.auth_clients)]
