from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.utils import RawClient

Connect = Callable[[Path, dict[str, Any] | None], Awaitable[RawClient]]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short temp directory: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="syncar-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock(sock_dir: Path) -> Path:
    return sock_dir / "syncar.sock"


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """`await connect(socket, hello)`: a RawClient closed when the test ends."""
    clients: list[RawClient] = []

    async def factory(socket: Path, hello: dict[str, Any] | None = None) -> RawClient:
        client = await RawClient.connect(socket, hello)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()
