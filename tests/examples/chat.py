"""examples/feathers-chat run as users run it: its servers (`server.js`, `cluster.js`) and its terminal client
(`client.js`, the Feathers client over socket.io) as real Node processes, each stopped by its own pid."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from tests.brokers import free_port
from tests.utils import REPO, unavailable, wait_for

EXAMPLE = REPO / "examples" / "feathers-chat"
TIMEOUT = 30.0


def require_example() -> str:
    """node, with the example's dependencies installed; skip (developer) or fail (CI) without them."""
    node = shutil.which("node")
    problem = None if node else "node is not installed"
    if node and not (EXAMPLE / "node_modules" / "@feathersjs" / "koa").is_dir():
        problem = "examples/feathers-chat has no node_modules (run scripts/install)"
    if problem:
        unavailable(problem)
    assert node is not None
    return node


class NodeProcess:
    """One Node process of the example; its output lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, script: str, *args: str, env: Mapping[str, str] | None = None) -> NodeProcess:
        process = await asyncio.create_subprocess_exec(
            require_example(),
            script,
            *args,
            cwd=EXAMPLE,
            env={**os.environ, **(env or {})},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process, f"{script} {' '.join(args)}".strip())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def count(self, pattern: str) -> int:
        return sum(1 for line in self.lines if re.search(pattern, line))

    async def wait_line(self, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> None:
        def seen() -> bool:
            assert self.process.returncode is None, f"{self.name} exited:\n{self.output()}"
            return self.count(pattern) >= count

        await wait_for(seen, timeout, f"{count} line(s) matching {pattern!r} from {self.name}:\n{self.output()}")

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await self._reader
        return code


class ChatServer(NodeProcess):
    """`node server.js` (or `cluster.js`) on a free loopback port, connected to the syncar on `socket`."""

    url: str

    @classmethod
    async def run(cls, socket: Path, name: str, script: str = "server.js", workers: int = 1) -> ChatServer:
        port = free_port()
        env = {"SYNCAR_SOCKET": str(socket), "PORT": str(port), "SERVER_NAME": name}
        server = await cls.start(script, env=env | {"WORKERS": str(workers)} if script == "cluster.js" else env)
        assert isinstance(server, ChatServer)
        server.url = f"http://127.0.0.1:{port}"
        await server.wait_line(r"listening on", workers)
        await server.wait_line(r"ready: connected to syncar", workers)
        return server


class ChatClient(NodeProcess):
    """`node client.js URL NAME`: prints every message created on any instance, sends each line it is given."""

    user: str

    @classmethod
    async def connect(cls, url: str, user: str) -> ChatClient:
        client = await cls.start("client.js", url, user)
        assert isinstance(client, ChatClient)
        client.user = user
        await client.wait_line(r'^\{"connected"')
        return client

    async def send(self, *texts: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("".join(f"{text}\n" for text in texts).encode())
        await self.process.stdin.drain()

    def messages(self) -> list[dict[str, Any]]:
        """The messages this client has received, in the order they came."""
        received = [orjson.loads(line) for line in self.lines if line.startswith('{"event":"created"')]
        return [event["data"] for event in received]


async def exchange(clients: list[ChatClient], count: int) -> dict[str, list[str]]:
    """Every client sends `count` messages, then one that ends its run, all at once; return what each sent."""
    sent = {client.user: [*(f"{client.user} #{n}" for n in range(count)), f"{client.user} end"] for client in clients}
    await asyncio.gather(*(client.send(*sent[client.user]) for client in clients))

    def ends_seen(client: ChatClient) -> bool:
        return {m["text"] for m in client.messages()} >= {texts[-1] for texts in sent.values()}

    for client in clients:
        await wait_for(
            functools.partial(ends_seen, client),
            TIMEOUT,
            f"{client.user} to receive every client's last message (has {len(client.messages())})",
        )
    return sent


def assert_each_message_once_in_order(clients: list[ChatClient], sent: dict[str, list[str]]) -> None:
    """Each client received each message of `sent` (sender -> texts, in the order sent) once, in order per sender."""
    for client in clients:
        received = client.messages()
        for name, texts in sent.items():
            got = [m["text"] for m in received if m["name"] == name]
            assert got == texts, f"{client.user}, from {name}: got {got}\n{client.output()}"
        assert len(received) == sum(len(texts) for texts in sent.values()), f"{client.user}: {received}"
