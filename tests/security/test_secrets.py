"""Secrets given by env, by *_FILE or on the command line never show up in logs, errors, `syncar check` or /metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.brokers import BrokerServer
from tests.utils import SpawnedDaemon, http_get, syncar

PASSWORD = "pw-Zq8rT3kLx0"
TOKEN = "tok-Vb5nM2wQy7"
SIGNING_KEY = "sk-Hj4dF9sA2pL6mN8q"


def assert_clean(text: str) -> None:
    for secret in (PASSWORD, TOKEN, SIGNING_KEY):
        assert secret not in text, f"a secret leaked:\n{text}"


async def test_secrets_stay_out_of_logs_check_and_metrics(nats_server: BrokerServer, sock_dir: Path) -> None:
    uri_file = sock_dir / "backend-uri"
    uri_file.write_text(f"nats://{TOKEN}@127.0.0.1:{nats_server.port}\n")
    keys = sock_dir / "keys"
    keys.write_text(SIGNING_KEY + "\n")
    env = {"SYNCAR_BACKEND_FILE": str(uri_file), "SYNCAR_SIGNING_KEY_FILE": str(keys)}

    check = await asyncio.to_thread(syncar, "check", env=env)
    assert check.returncode == 0, check.stderr
    assert "nats://***@127.0.0.1" in check.stdout
    assert_clean(check.stdout + check.stderr)

    daemon = SpawnedDaemon(sock_dir / "s.sock", env=env)
    try:
        await daemon.ready()
        status, metrics = await http_get(daemon.http_port, "/metrics")
        assert status == 200
        assert_clean(metrics)
        assert await daemon.stop() == 0
        assert "nats: connected" in daemon.log
        assert_clean(daemon.log)
    finally:
        daemon.kill()


def test_a_refused_password_is_one_clean_line(redis_server: BrokerServer, sock_dir: Path) -> None:
    uri = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"  # this redis has no password: AUTH fails
    result = syncar("run", "--socket", str(sock_dir / "s.sock"), "--http", "off", env={"SYNCAR_BACKEND": uri})
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "cannot start" in result.stderr
    assert_clean(result.stdout + result.stderr)


def test_a_bad_uri_is_reported_without_its_password() -> None:
    result = syncar("check", "--backend", f"kafka://user:{PASSWORD}@host/")
    assert result.returncode == 2
    assert "kafka://user:***@host/" in result.stderr
    assert_clean(result.stderr)


@pytest.mark.parametrize(
    "uri",
    [
        f"redis://user:{PASSWORD}@[::1",  # urlsplit's ValueError, and the URI in its traceback
        f"user:{PASSWORD}@127.0.0.1:6379",  # no scheme: it was echoed back whole
        PASSWORD,  # a password pasted alone
        f"redis:/user:{PASSWORD}@127.0.0.1:6379",  # one slash: no host, so nothing looked like a password
        f"redis://user:{PASSWORD}@127.0.0.1:port",
        f"amqp://user:{PASSWORD}/x@127.0.0.1:5672",  # a raw / in the password: the rest read as the vhost
        f"amqp://user:{PASSWORD}[x@127.0.0.1:5672",
        f"nats://user:{PASSWORD}?x@127.0.0.1:4222",  # a raw ? in the password: the rest read as options
    ],
)
def test_a_malformed_uri_is_one_line_without_its_password(uri: str) -> None:
    result = syncar("check", "--http", "off", "--backend", uri)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("syncar: invalid setting --backend / SYNCAR_BACKEND: ")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert_clean(result.stdout + result.stderr)


@pytest.mark.parametrize("given", ["flag", "env"])
async def test_a_password_on_the_command_line_is_warned_about(sock_dir: Path, given: str) -> None:
    uri = f"local://user:{PASSWORD}@here"
    args, env = (("--backend", uri), {}) if given == "flag" else ((), {"SYNCAR_BACKEND": uri})
    daemon = SpawnedDaemon(sock_dir / "s.sock", "--http", "off", *args, env=env)
    try:
        await daemon.ready()
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
    warnings = [line for line in daemon.log.splitlines() if "--backend-file" in line]
    if given == "flag":  # ps shows it to everyone; the environment only to the same user and root
        assert len(warnings) == 1 and "WARNING" in warnings[0] and "SYNCAR_BACKEND" in warnings[0], daemon.log
    else:
        assert warnings == []
    assert_clean(daemon.log)
