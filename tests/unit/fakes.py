"""Fakes for testing the relay and the outbox without a socket or a broker: a backend that records what it is
given and fails or holds on demand, and a subscriber that records the frames the relay sends it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import msgspec
import orjson

from backends.base import Backend, BackendConfig, Feature, Handler, Subscription
from sidecar.codec import Event, Outgoing, encode


class FakeBackend(Backend):
    """Accepts every publish and records it, except that it raises the errors queued in `failures` (one per
    publish, in order), and holds a publish in flight while `held` is cleared."""

    name = "fake"
    features: ClassVar[frozenset[Feature]] = frozenset()

    def __init__(self, max_message_bytes: int = 8 * 1024 * 1024) -> None:
        super().__init__(BackendConfig("fake://", "fake"))
        self.max_message_bytes = max_message_bytes
        self.attempts = 0  # publish() calls, failed or not
        self.published: list[list[bytes]] = []  # the bodies of each publish() that succeeded
        self.failures: list[BaseException] = []
        self.held = asyncio.Event()
        self.held.set()

    async def start(self) -> None:
        pass

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        self.attempts += 1
        await self.held.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.published.append(list(bodies))

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    def sent_data(self) -> list[list[Any]]:
        """The `data` of the events of each message published (syncar codec: a message is a batch)."""
        return [[event["data"] for event in orjson.loads(body)["events"]] for call in self.published for body in call]


def outgoing(data: Any, event_id: str | None = None, size: int = 0) -> Outgoing:
    """A local event on its way to the broker; `size` pads its data to about that many bytes."""
    payload = orjson.dumps(data if not size else {"n": data, "pad": "x" * size})
    event = Event(event_id or f"id-{data}", time.time(), "created", "messages", msgspec.Raw(payload))
    return Outgoing(event, encode(event), time.monotonic())


class FakeSubscriber:
    """A client as the relay sees it (sidecar.subscriber.Subscriber), recording the frames it is sent."""

    def __init__(
        self,
        client_id: str,
        *,
        echo: bool = False,
        queue_bytes: int = 1 << 20,
        wants: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.client_id = client_id
        self.id_scope = ""
        self.echo = echo
        self.paused = False
        self.queue_bytes = queue_bytes
        self.max_frame_bytes = 1 << 20
        self._wants = wants
        self.frames: list[bytes] = []
        self.closed_with: bytes | None = None

    def wants(self, path: str, event: str) -> bool:
        return self._wants is None or self._wants(path, event)

    def send(self, frame: bytes) -> None:
        assert self.closed_with is None, "sent a frame after closing"
        self.frames.append(frame)

    def peer_gone(self) -> bool:
        return self.closed_with is not None

    def close(self, last_frame: bytes | None = None) -> None:
        self.closed_with = last_frame

    def decoded(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The frames sent, as objects; only those of type `kind` if given."""
        frames = [orjson.loads(frame) for frame in self.frames]
        return [frame for frame in frames if kind is None or frame["type"] == kind]

    def data(self) -> list[Any]:
        """The `data` of the events sent, in order."""
        return [frame["data"] for frame in self.decoded("event")]
