"""The Feathers scaling guide's two setups, with examples/feathers-chat: Feathers servers with the socket.io transport
and @syncar/feathers, and a socket.io client (the Feathers client, WebSocket only) on each.

- Multiple instances: three servers, each with its own syncar, the syncars on one Redis.
- Cluster: one server forking four workers (node:cluster) that share a port, all on one syncar (local://).

A message created through any client reaches every client once, in order per client that created it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.brokers import BrokerServer
from tests.examples.chat import ChatClient, ChatServer, assert_each_message_once_in_order, exchange
from tests.utils import SpawnedDaemon

pytestmark = pytest.mark.timeout(180)

MESSAGES = 20
WORKERS = 4


@pytest.fixture
async def stopped_at_end() -> AsyncIterator[list[ChatServer | ChatClient]]:
    """Node processes the test started, stopped when it ends; the servers must exit 0 (a clean shutdown)."""
    started: list[ChatServer | ChatClient] = []
    yield started
    codes = await asyncio.gather(*(process.stop() for process in reversed(started)))
    for process, code in zip(reversed(started), codes, strict=True):
        if isinstance(process, ChatServer):
            assert code == 0, f"{process.name} exited with {code}:\n{process.output()}"


@pytest.mark.redis
async def test_three_instances_each_with_its_own_syncar(
    redis_server: BrokerServer, sock_dir: Path, stopped_at_end: list[ChatServer | ChatClient]
) -> None:
    key = ("--backend", redis_server.uri, "--key", f"chat-{sock_dir.name}")
    daemons: list[SpawnedDaemon] = []
    try:
        for name in "abc":  # started inside the try: a daemon that fails to start stops those before it
            daemons.append(await SpawnedDaemon(sock_dir / f"{name}.sock", *key, name=name).ready())
        clients = []
        for daemon, name in zip(daemons, "abc", strict=True):
            server = await ChatServer.run(daemon.socket, f"server-{name}")
            stopped_at_end.append(server)
            clients.append(await ChatClient.connect(server.url, f"user-{name}"))
            stopped_at_end.append(clients[-1])

        sent = await exchange(clients, MESSAGES)

        assert_each_message_once_in_order(clients, sent)
        for client in clients:
            # Created on the server the client is connected to: each client did talk to its own instance.
            own = {m["server"].partition(":")[0] for m in client.messages() if m["name"] == client.user}
            assert own == {f"server-{client.user[-1]}"}
    finally:
        for daemon in daemons:
            await daemon.stop()


async def test_cluster_workers_on_one_syncar(sock_dir: Path, stopped_at_end: list[ChatServer | ChatClient]) -> None:
    daemon = await SpawnedDaemon(sock_dir / "syncar.sock").ready()
    try:
        primary = await ChatServer.run(daemon.socket, "worker", script="cluster.js", workers=WORKERS)
        stopped_at_end.append(primary)
        # Each client's connection is handed to one worker, in turn: as many clients as workers reach them all.
        clients = [await ChatClient.connect(primary.url, f"user-{n}") for n in range(WORKERS)]
        stopped_at_end.extend(clients)

        sent = await exchange(clients, MESSAGES)

        assert_each_message_once_in_order(clients, sent)
        # Which worker created each client's messages (SERVER_NAME, then its pid): one per client, all different.
        creators = [{m["server"] for m in client.messages() if m["name"] == client.user} for client in clients]
        assert all(len(workers) == 1 for workers in creators), creators
        assert len(set.union(*creators)) == WORKERS, creators
    finally:
        await daemon.stop()
