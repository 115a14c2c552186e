"""A real Feathers app with the real feathers-sync 3.1.1 and a syncar app on the same broker see each other's events.

feathers-sync emits even its own events only when they come back from the broker, so every event the Node app
prints went over the wire.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.brokers import BrokerServer
from tests.conftest import Connect
from tests.utils import RawClient, publish_frame, run_daemon, unavailable

HERE = Path(__file__).parent
TIMEOUT = 20.0


def _require_node_app() -> str:
    node = shutil.which("node")
    problem = None if node else "node is not installed"
    if node and not (HERE / "node_modules" / "feathers-sync").is_dir():
        problem = "tests/interop has no node_modules (run scripts/install)"
    if problem:
        unavailable(problem)
    assert node is not None
    return node


class FeathersSyncApp:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            raw = await self.process.stdout.readline()
        assert raw, "the feathers-sync app exited"
        line: dict[str, Any] = orjson.loads(raw)
        return line

    async def event(self, **expected: Any) -> dict[str, Any]:
        """The next event whose fields match `expected`, skipping others (its own echoes)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = await self.line()
                if all(line.get(k) == v for k, v in expected.items()):
                    return line


@pytest.fixture(params=["redis", "rabbitmq", "nats"])
def broker(request: pytest.FixtureRequest) -> BrokerServer:
    server: BrokerServer = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture
async def feathers_sync(broker: BrokerServer) -> AsyncIterator[tuple[FeathersSyncApp, str]]:
    node = _require_node_app()
    key = f"interop-{uuid.uuid4().hex}"
    process = await asyncio.create_subprocess_exec(
        node, str(HERE / "feathers_sync_app.js"), broker.uri, key, cwd=HERE,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    app = FeathersSyncApp(process)
    try:
        assert await app.line() == {"ready": True}
        yield app, key
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_events_cross_between_feathers_sync_and_syncar(
        broker: BrokerServer, feathers_sync: tuple[FeathersSyncApp, str], sock: Path, connect: Connect) -> None:
    node, key = feathers_sync
    async with run_daemon(sock, backend=broker.uri, key=key, codec="feathers-sync"):
        app: RawClient = await connect(sock, {"client": "python-app"})

        # feathers-sync -> syncar: service methods on the Node app.
        await node.send({"create": {"text": "from node"}})
        created = await app.frame_of("event", timeout=TIMEOUT)
        assert (created["path"], created["event"], created["origin"]) == ("messages", "created", None)
        assert created["data"] == {"text": "from node", "id": 1000}
        assert created["context"]["params"] == {"provider": "rest", "from": "feathers-sync"}
        assert created["context"]["method"] == "create"
        await node.send({"patch": [1000, {"text": "patched in node"}]})
        await node.send({"remove": 1000})
        # feathers-sync's NATS adapter opens a connection per publish, so its events may arrive in either order.
        later = {frame["event"]: frame for frame in [await app.frame_of("event", timeout=TIMEOUT) for _ in range(2)]}
        assert later["patched"]["data"]["text"] == "patched in node"
        assert later["removed"]["data"]["id"] == 1000

        # syncar -> feathers-sync: the Node app's listeners fire with the same data and params.
        params = {"provider": "socketio", "user": {"id": 7, "name": "zoë"}}
        await app.send(publish_frame("messages", "created", {"id": 7, "text": "from syncar ✓"},
                                     context={"params": params, "method": "create"}))
        seen = await node.event(event="created", data={"id": 7, "text": "from syncar ✓"})
        assert seen["params"] == params
        await app.send(publish_frame("messages", "typing", {"user": 7}))
        typing = await node.event(event="typing")
        assert typing["data"] == {"user": 7}
