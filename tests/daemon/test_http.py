"""Health, readiness and metrics over HTTP, and `syncar health`."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.brokers.redis import RedisServer
from tests.conftest import Connect
from tests.utils import REPO, SpawnedDaemon, http_get, publish_frame, run_daemon, wait_for


def samples(text: str) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


async def test_health_ready_and_metrics(sock: Path, connect: Connect) -> None:
    async with run_daemon(sock) as daemon:
        assert daemon.http is not None
        port = daemon.http.port
        assert await http_get(port, "/healthz") == (200, "ok\n")
        assert await http_get(port, "/readyz") == (200, "ready\n")
        assert await http_get(port, "/readyz/broker") == (200, "ready\n")
        a = await connect(sock, {})
        b = await connect(sock, {})
        await a.send(publish_frame(id="1", ack=True))
        await a.send(b"not json\n")
        assert {(await a.frame())["type"] for _ in range(2)} == {"ack", "error"}
        await b.frame_of("event")
        status, text = await http_get(port, "/metrics")
        assert status == 200
        found = samples(text)
        assert found["syncar_events_published_total"] == 1
        assert found["syncar_events_sent_total"] == 1
        assert found["syncar_events_delivered_total"] == 1
        assert found["syncar_frame_errors_total{code=invalid_json}"] == 1
        assert found["syncar_clients"] == 2
        assert found["syncar_broker_up"] == 1
        assert found["syncar_replay_events"] == 1
        assert found["syncar_outbox_events"] == 0
        assert found["syncar_publish_seconds_count"] == 1
        assert found["syncar_build_info{backend=local,codec=syncar,version=0.1.0}"] == 1


async def test_http_errors(sock: Path) -> None:
    async with run_daemon(sock) as daemon:
        assert daemon.http is not None
        port = daemon.http.port
        assert (await http_get(port, "/nope"))[0] == 404
        assert (await http_get(port, "/healthz", method="POST"))[0] == 405
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"garbage\r\n\r\n")
        async with asyncio.timeout(5):
            assert b" 400 " in await reader.read()
        writer.close()


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on, from the kernel's tables (the inodes of its sockets in LISTEN)."""
    inodes = {os.readlink(fd).removeprefix("socket:[").removesuffix("]") for fd in Path(f"/proc/{pid}/fd").iterdir()}
    ports = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state, inode = (row.split()[i] for i in (1, 3, 9))
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                ports.add(int(local.rpartition(":")[2], 16))
    return ports


async def test_http_off(sock_dir: Path) -> None:
    """With --http off nothing listens on TCP; the same probe finds the port of a daemon with HTTP on."""
    on = SpawnedDaemon(sock_dir / "on.sock", name="on")
    off = SpawnedDaemon(sock_dir / "off.sock", "--http", "off", name="off")
    try:
        await on.ready()
        assert listening_tcp_ports(on.process.pid) == {on.http_port}
        await off.ready()
        assert listening_tcp_ports(off.process.pid) == set()
        assert "http on" not in off.log
    finally:
        on.kill()
        off.kill()


def health(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "health", "--http", f"0.0.0.0:{port}", *extra],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


async def test_syncar_health_command(sock: Path) -> None:
    daemon = SpawnedDaemon(sock)
    try:
        await daemon.ready()
        port = daemon.http_port
        alive = await asyncio.to_thread(health, port)
        assert alive.returncode == 0, alive.stderr
        ready = await asyncio.to_thread(health, port, "--ready")
        assert (ready.returncode, ready.stdout.strip()) == (0, "ready")
        assert await daemon.stop() == 0
        gone = await asyncio.to_thread(health, port)
        assert gone.returncode == 1
        assert "Traceback" not in gone.stderr
    finally:
        daemon.kill()


async def test_metrics_carry_no_created_series(sock: Path) -> None:
    async with run_daemon(sock) as daemon:
        assert daemon.http is not None
        status, text = await http_get(daemon.http.port, "/metrics")
    assert status == 200
    assert "syncar_events_published_total" in samples(text)
    assert [name for name in samples(text) if "_created" in name] == []


@pytest.mark.redis
async def test_readiness_is_the_socket_and_the_broker_has_a_route_of_its_own(sock: Path, connect: Connect) -> None:
    """A broker outage must not take every pod out of its Service: the apps still use their daemon meanwhile."""
    broker = RedisServer()
    try:
        broker.start()
        async with run_daemon(sock, backend=broker.uri) as daemon:
            assert daemon.http is not None
            port = daemon.http.port
            await asyncio.to_thread(broker.kill)
            await wait_for(lambda: not daemon.relay.broker_up, what="the daemon to see the broker gone")
            assert await http_get(port, "/readyz") == (200, "ready\n")
            assert await http_get(port, "/readyz/broker") == (503, "broker redis not connected\n")
            ready = await asyncio.to_thread(health, port, "--ready")
            assert (ready.returncode, ready.stdout.strip()) == (0, "ready")
            with_broker = await asyncio.to_thread(health, port, "--broker")
            assert with_broker.returncode == 1
            assert with_broker.stderr.strip().endswith("/readyz/broker: 503 broker redis not connected")
            # What readiness promises: the socket serves, locally.
            a, b = await connect(sock, {}), await connect(sock, {})
            await a.send(publish_frame(data="during the outage"))
            assert (await b.frame_of("event"))["data"] == "during the outage"
            await asyncio.to_thread(broker.start)
            await wait_for(lambda: daemon.relay.broker_up, what="the broker back")
            assert await http_get(port, "/readyz/broker") == (200, "ready\n")
    finally:
        broker.cleanup()


async def test_a_connection_reset_mid_request_is_quiet(sock: Path) -> None:
    daemon = SpawnedDaemon(sock)
    try:
        await daemon.ready()
        for _ in range(20):
            _, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the head is not finished
            await writer.drain()
            raw = writer.get_extra_info("socket")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends a reset
            writer.transport.abort()
        assert (await http_get(daemon.http_port, "/healthz"))[0] == 200
        assert await daemon.stop() == 0  # the log is complete once the daemon has exited
        assert "Traceback" not in daemon.log and "ERROR" not in daemon.log, daemon.log
    finally:
        daemon.kill()
