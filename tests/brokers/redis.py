"""A real redis-server for the tests: loopback only, its files in a temp dir, no persistence unless asked.

`RedisServer(persistent=True)` keeps an append-only file with `appendfsync always` in its temp dir, which
restart() keeps, as durable mode needs: every write Redis has answered survives a SIGKILL.

`RedisTlsServer` is the same server speaking only TLS, with a throwaway CA, a
server certificate and a client certificate made by the `openssl` CLI, so
`rediss://` and its URI options are tested against the real thing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlencode

from tests.brokers import BrokerServer, require_binary


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
        return [self.binary, *self.listen_args(), "--bind", "127.0.0.1", "--save", "", *persistence,
                "--dir", str(self.dir), "--logfile", "", "--daemonize", "no"]

    def listen_args(self) -> list[str]:
        return ["--port", str(self.port)]


class RedisTlsServer(RedisServer):
    """redis-server with only a TLS port; clients must present a certificate signed by the test CA."""

    name = "redis-tls"

    def __init__(self) -> None:
        require_binary("openssl")  # to make the certificates
        super().__init__()
        self.ca = self.dir / "ca.crt"
        self.server_cert, self.server_key = self.dir / "server.crt", self.dir / "server.key"
        self.client_cert, self.client_key = self.dir / "client.crt", self.dir / "client.key"
        self._make_certificates()

    @property
    def uri(self) -> str:
        query = urlencode({"ssl_ca_certs": self.ca, "ssl_certfile": self.client_cert,
                           "ssl_keyfile": self.client_key})
        return f"rediss://127.0.0.1:{self.port}/0?{query}"

    def listen_args(self) -> list[str]:
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.server_cert),
                "--tls-key-file", str(self.server_key), "--tls-ca-cert-file", str(self.ca),
                "--tls-auth-clients", "yes"]

    def _make_certificates(self) -> None:
        ca_key = self.dir / "ca.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=syncar test CA",
                 "-keyout", ca_key, "-out", self.ca)
        # The server certificate names 127.0.0.1, so hostname checking stays on in the tests.
        extensions = self.dir / "server.ext"
        extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
        for cert, key, subject, ext in ((self.server_cert, self.server_key, "/CN=127.0.0.1", extensions),
                                        (self.client_cert, self.client_key, "/CN=syncar test client", None)):
            request = cert.with_suffix(".csr")
            _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out", request)
            _openssl("x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial",
                     "-days", "2", "-out", cert, *(("-extfile", ext) if ext else ()))


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)
