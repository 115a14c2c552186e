"""What the backend test modules share: a recording handler, and a publish retried through a failover."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

from backends import load_backend
from backends.base import Backend, BackendConfig, BackendUnavailable, Message, Mode, PublishUnconfirmed
from tests.utils import eventually, wait_for

B = TypeVar("B", bound=Backend)


class Inbox:
    """A handler that keeps the bodies and positions it got; `fail` makes it raise on chosen first deliveries."""

    def __init__(self, fail: set[bytes] | None = None) -> None:
        self.bodies: list[bytes] = []
        self.positions: list[str | None] = []
        self.accepted: list[float | None] = []  # Message.accepted_at
        self.attempts: list[bytes] = []
        self._fail = set(fail or ())

    async def __call__(self, message: Message) -> None:
        self.attempts.append(message.body)
        if message.body in self._fail:
            self._fail.discard(message.body)
            raise RuntimeError(f"handler refused {message.body!r} once")
        self.bodies.append(message.body)
        self.positions.append(message.position)
        self.accepted.append(message.accepted_at)

    async def wait(self, count: int, timeout: float = 10.0) -> list[bytes]:
        await wait_for(lambda: len(self.bodies) >= count, timeout, f"{count} messages (have {len(self.bodies)})")
        return self.bodies


class Started:
    """The backends a test started, all closed when it ends (the `started` fixture)."""

    def __init__(self) -> None:
        self._backends: list[Backend] = []

    def __len__(self) -> int:
        return len(self._backends)

    async def __call__(self, backend: B) -> B:
        """Start `backend` and keep it for closing; a backend that fails to start is closed too."""
        self._backends.append(backend)
        await backend.start()
        return backend

    async def on(self, uri: str, mode: Mode = Mode.BROADCAST, instance_id: str = "") -> Backend:
        """The URI's backend class for `mode`, made with the defaults and started (cluster tests)."""
        config = BackendConfig(uri, instance_id or f"test-{uuid.uuid4().hex[:8]}", mode=mode)
        return await self(load_backend(uri, mode)(config))

    async def close(self) -> None:
        for backend in self._backends:
            await backend.close()


async def publish_until_accepted(backend: Backend, topic: str, body: bytes, timeout: float = 20.0) -> None:
    """Publish `body` again until the broker accepts it, as the outbox would through a failover."""

    async def published() -> bool:
        try:
            await backend.publish(topic, [body])
        except (BackendUnavailable, PublishUnconfirmed):
            return False
        return True

    await eventually(published, timeout, "a publish accepted after the failover")


@contextlib.contextmanager
def tasks_started() -> Iterator[list[str]]:
    """The names of the coroutines the running loop makes Tasks of meanwhile (a Task per message is a cost the hot
    path must not pay)."""
    loop = asyncio.get_running_loop()
    created: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        created.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        yield created
    finally:
        loop.set_task_factory(None)
