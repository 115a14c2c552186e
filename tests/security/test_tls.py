"""TLS and credentials to every broker: brokers started with TLS and authentication on, a throwaway CA made
here; the right settings connect, and a wrong CA, an expired certificate or a wrong password each fail with
one clear line, no traceback and no secret."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from backends.base import BackendConfig, BackendRefused
from backends.redis import RedisBackend
from tests.brokers import port_open, serve
from tests.brokers.certs import Certificates, make_certificates
from tests.brokers.nats import NatsServer
from tests.brokers.rabbitmq import RabbitServer
from tests.brokers.redis import RedisTlsServer
from tests.brokers.redis_sentinel import MASTER_NAME, SentinelServer
from tests.utils import syncar

PASSWORD = "Tls-pw-8s7D6f5G"
WRONG = "not-the-password"


class TlsRedis(RedisTlsServer):
    """No client certificate asked for: a password instead."""

    def __init__(self, *, expired: bool) -> None:
        super().__init__(auth_clients=False, server_expired=expired)

    def listen_args(self) -> list[str]:
        return [*super().listen_args(), "--requirepass", PASSWORD]

    def secure_uri(self, password: str, ca: Path) -> str:
        return f"rediss://:{quote(password)}@127.0.0.1:{self.port}/0?ssl_ca_certs={ca}"


class TlsRabbit(RabbitServer):
    name = "rabbitmq-tls"

    def __init__(self, *, expired: bool) -> None:
        self._expired = expired  # read by _tls_config() during RabbitServer.__init__
        super().__init__(tls=True)

    def _tls_config(self) -> list[str]:
        self.certs = make_certificates(self.dir, server_expired=self._expired)
        return [
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
            f"ssl_options.cacertfile = {self.certs.ca}",
            f"ssl_options.certfile = {self.certs.server_cert}",
            f"ssl_options.keyfile = {self.certs.server_key}",
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
            f"default_pass = {PASSWORD}",
        ]

    def ready(self) -> bool:
        return port_open(self.port) and self.tls_answers()  # no amqp_login: guest's password is PASSWORD here

    def secure_uri(self, password: str, ca: Path) -> str:
        return f"amqps://guest:{quote(password)}@127.0.0.1:{self.tls_port}/?cafile={ca}"


class TlsNats(NatsServer):
    name = "nats-tls"

    def __init__(self, *, expired: bool) -> None:
        super().__init__()
        self.certs = make_certificates(self.dir, server_expired=expired)

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--tls",
            "--tlscert",
            str(self.certs.server_cert),
            "--tlskey",
            str(self.certs.server_key),
            "--user",
            "syncar",
            "--pass",
            PASSWORD,
        ]

    def secure_uri(self, password: str, ca: Path) -> str:
        return f"tls://syncar:{quote(password)}@127.0.0.1:{self.port}?tls_ca={ca}"


Secure = TlsRedis | TlsRabbit | TlsNats
SERVERS: dict[str, type[Secure]] = {"redis": TlsRedis, "rabbitmq": TlsRabbit, "nats": TlsNats}


@pytest.fixture(scope="module", params=list(SERVERS))
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Secure, Secure, Certificates]]:
    """A broker with a valid certificate, one with an expired certificate, and an unrelated CA."""
    kind = SERVERS[request.param]
    valid, expired = kind(expired=False), kind(expired=True)
    try:
        for server in (valid, expired):
            server.start()
        yield valid, expired, make_certificates(tmp_path_factory.mktemp("other-ca"), prefix="other-")
    finally:
        for server in (valid, expired):
            server.cleanup()


def check(uri: str) -> subprocess.CompletedProcess[str]:
    return syncar("check", "--backend", uri)


def run(uri: str, sock_dir: Path) -> subprocess.CompletedProcess[str]:
    return syncar("run", "--socket", str(sock_dir / "s.sock"), "--http", "off", "--backend", uri)


def one_clean_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0].lower()


@pytest.mark.timeout(120)  # the first test of each broker boots its two servers: two RabbitMQ nodes, one by one
async def test_tls_and_auth(servers: tuple[Secure, Secure, Certificates]) -> None:
    valid, expired, other = servers
    good = await asyncio.to_thread(check, valid.secure_uri(PASSWORD, valid.certs.ca))
    assert good.returncode == 0, good.stderr
    assert "reachable" in good.stdout
    assert PASSWORD not in good.stdout + good.stderr

    wrong_ca = one_clean_line(await asyncio.to_thread(check, valid.secure_uri(PASSWORD, other.ca)))
    assert "certificate" in wrong_ca
    outdated = one_clean_line(await asyncio.to_thread(check, expired.secure_uri(PASSWORD, expired.certs.ca)))
    assert "expired" in outdated
    refused = one_clean_line(await asyncio.to_thread(check, valid.secure_uri(WRONG, valid.certs.ca)))
    assert any(word in refused for word in ("password", "auth", "access_refused", "credentials")), refused
    assert WRONG not in refused


def test_run_with_a_wrong_password_exits_3_in_one_line(
    servers: tuple[Secure, Secure, Certificates], sock_dir: Path
) -> None:
    valid, _, _ = servers
    result = run(valid.secure_uri(WRONG, valid.certs.ca), sock_dir)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert WRONG not in result.stderr
    assert "cannot start" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("broker", "tls_uri"),
    [
        ("rabbitmq", "amqps://guest:guest@127.0.0.1:{port}/"),
        ("nats", "tls://127.0.0.1:{port}"),
    ],
)
def test_a_tls_uri_to_a_plain_listener_exits_3_in_one_line(
    request: pytest.FixtureRequest, sock_dir: Path, broker: str, tls_uri: str
) -> None:
    """A typo a retry cannot fix (amqps:// to 5672): the start is refused, not retried for ever. (A plain Redis
    answers no TLS hello at all: that stays a timeout, retried as an outage.)"""
    plain = request.getfixturevalue(f"{broker}_server")
    result = run(tls_uri.format(port=plain.port), sock_dir)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot start" in last
    assert "wrong version number" in last or "did not offer tls" in last.lower(), last


@pytest.fixture(scope="module")
def tls_sentinel(redis_tls_server: RedisTlsServer) -> Iterator[SentinelServer]:
    """A TLS-only sentinel (client certificates required) watching the session's TLS-only Redis."""
    yield from serve(SentinelServer(redis_tls_server.port, quorum=1, tls=redis_tls_server))


@pytest.mark.redis
@pytest.mark.parametrize(("where", "starts"), [("server", 20), ("sentinel", 60)])
async def test_redis_refusing_our_client_certificate_is_refused_for_good(
    request: pytest.FixtureRequest, redis_tls_server: RedisTlsServer, tmp_path: Path, where: str, starts: int
) -> None:
    """A client certificate another CA signed, to a Redis (or a sentinel) that asks for one: its alert is the reason,
    every time, though TLS 1.3 may deliver it after our side of the handshake, closing the connection before the
    first command. Taken for an outage and retried for ever: 130 starts of 200 on one server, 5 of 100 through a
    sentinel (hence more starts there)."""
    other = make_certificates(tmp_path, prefix="other-")
    query = urlencode(
        {"ssl_ca_certs": redis_tls_server.ca, "ssl_certfile": other.client_cert, "ssl_keyfile": other.client_key}
    )
    if where == "server":
        uri, place = f"rediss://127.0.0.1:{redis_tls_server.port}/0?{query}", r"127\.0\.0\.1:\d+"
    else:
        sentinel: SentinelServer = request.getfixturevalue("tls_sentinel")
        uri = f"rediss+sentinel://127.0.0.1:{sentinel.port}/{MASTER_NAME}?{query}"
        place = rf"master '{MASTER_NAME}' via sentinels 127\.0\.0\.1:\d+"
    for _ in range(starts):
        backend = RedisBackend(BackendConfig(uri, "k", 5.0))
        try:
            with pytest.raises(
                BackendRefused, match=rf"^redis: cannot connect to {place}: tls: tlsv1 alert unknown ca$"
            ):
                await backend.start()
        finally:
            await backend.close()
