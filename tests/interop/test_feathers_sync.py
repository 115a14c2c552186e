"""A real Feathers app with the real feathers-sync 3.1.1 and a syncar app on the same broker see each other's events.

feathers-sync emits even its own events only when they come back from the broker, so every event the Node app
prints went over the wire.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
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


@asynccontextmanager
async def node_app(*args: str) -> AsyncIterator[FeathersSyncApp]:
    """feathers_sync_app.js with `args` (see its header), once it said it is ready."""
    node = _require_node_app()
    process = await asyncio.create_subprocess_exec(
        node,
        str(HERE / "feathers_sync_app.js"),
        *args,
        cwd=HERE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    app = FeathersSyncApp(process)
    try:
        assert await app.line() == {"ready": True}
        yield app
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def feathers_sync(broker: BrokerServer) -> AsyncIterator[tuple[FeathersSyncApp, str]]:
    key = f"interop-{uuid.uuid4().hex}"
    async with node_app(broker.uri, key) as app:
        yield app, key


async def test_events_cross_between_feathers_sync_and_syncar(
    broker: BrokerServer, feathers_sync: tuple[FeathersSyncApp, str], sock: Path, connect: Connect
) -> None:
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
        await app.send(
            publish_frame(
                "messages",
                "created",
                {"id": 7, "text": "from syncar ✓"},
                context={"params": params, "method": "create"},
            )
        )
        seen = await node.event(event="created", data={"id": 7, "text": "from syncar ✓"})
        assert seen["params"] == params
        await app.send(publish_frame("messages", "typing", {"user": 7}))
        typing = await node.event(event="typing")
        assert typing["data"] == {"user": 7}


AT = "2025-05-06T07:08:09.000Z"


@pytest.mark.parametrize(
    "broker",
    [
        "redis",
        "rabbitmq",
        # No "nats": feathers-sync's NATS adapter turns a Buffer into text (StringCodec) and hands its deserialize a
        # string, so a binary serializer does not work between feathers-sync apps there either.
    ],
    indirect=True,
)
async def test_binary_events_cross_between_feathers_sync_and_syncar_byte_for_byte(
    broker: BrokerServer, sock: Path, connect: Connect
) -> None:
    """Both apps serialize with BSON: what feathers-sync publishes reaches the syncar app as those bytes, and what the
    syncar app publishes reaches feathers-sync's deserialize as the bytes the plugin's serialize made."""
    key = f"interop-{uuid.uuid4().hex}"
    async with (
        node_app(broker.uri, key, "bson") as node,
        run_daemon(sock, backend=broker.uri, key=key, codec="feathers-sync"),
        node_app(str(sock), key, "bson", "syncar") as ours,
    ):
        raw: RawClient = await connect(sock, {"client": "wire"})

        # Custom events, emitted with their data as it is (the memory service would make Dates strings).
        await node.send({"custom": {"text": "from node", "at": {"$date": AT}}})
        out = (await node.line())["out"]
        frame = await raw.frame_of("event", timeout=TIMEOUT)
        assert (frame["bin"], frame["path"], frame["event"], frame["origin"]) == (out, "", "", None)
        seen = await ours.event(event="typing")
        assert (seen["data"], seen["kinds"]["at"]) == ({"text": "from node", "at": AT}, "Date")  # JSON: a string
        await node.send({"create": {"text": "created in node"}})
        seen = await ours.event(event="created")
        assert (seen["data"], seen["params"]) == (
            {"text": "created in node", "id": 1000},
            {"provider": "rest", "from": "feathers-sync"},
        )

        await ours.send({"custom": {"text": "from syncar ✓", "at": {"$date": AT}}})
        async with asyncio.timeout(TIMEOUT):
            while (frame := await raw.frame_of("event"))["event"] != "typing":
                pass
        assert (frame["path"], frame["data"], frame["origin"] is not None) == ("messages", None, True)
        lines = await _lines_until(node, event="typing", data={"text": "from syncar ✓", "at": AT})
        assert lines[-1]["kinds"]["at"] == "Date"
        assert {"in": frame["bin"]} in lines, "feathers-sync did not receive the plugin's BSON bytes unchanged"
        await ours.send({"create": {"text": "created in syncar"}})
        seen = await node.event(event="created", data={"text": "created in syncar", "id": 1000})
        assert seen["params"] == {"provider": "rest", "from": "syncar"}


async def _lines_until(app: FeathersSyncApp, **expected: Any) -> list[dict[str, Any]]:
    """The app's lines up to and including the first whose fields match `expected`."""
    lines: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while not lines or not all(lines[-1].get(k) == v for k, v in expected.items()):
            lines.append(await app.line())
    return lines


@pytest.mark.parametrize("broker", ["local", "redis", "rabbitmq", "nats"])
async def test_binary_events_between_syncar_apps(broker: str, request: pytest.FixtureRequest, sock_dir: Path) -> None:
    """Two apps with @syncar/feathers and a BSON serializer, each with its own syncar (one daemon on local://)."""
    uri = "local://" if broker == "local" else request.getfixturevalue(f"{broker}_server").uri
    sockets = [sock_dir / "a.sock", sock_dir / "a.sock" if broker == "local" else sock_dir / "b.sock"]
    key = f"bin-{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        for path in dict.fromkeys(sockets):
            await stack.enter_async_context(run_daemon(path, backend=uri, key=key))
        a, b = [await stack.enter_async_context(node_app(str(path), "-", "bson", "syncar")) for path in sockets]
        for sender, receiver, text in ((a, b, "from a"), (b, a, "from b")):
            await sender.send({"custom": {"text": text, "at": {"$date": AT}}})
            seen = await receiver.event(event="typing", data={"text": text, "at": AT})
            assert seen["kinds"] == {"text": "String", "at": "Date"}
            await sender.send({"create": {"text": text}})
            seen = await receiver.event(event="created", data={"text": text, "id": 1000})
            assert seen["params"] == {"provider": "rest", "from": "syncar"}
