"""What the relay needs of a client (sidecar.connection.Connection is one; tests have fakes)."""

from __future__ import annotations

from typing import Protocol


class Subscriber(Protocol):
    """What the relay needs of a client: what it wants, and a way to send it frames (sidecar.connection.Connection)."""

    client_id: str  # marks the events it publishes, so that it does not get them back
    id_scope: str  # what the ids it gives its events are prefixed with on the bus (Relay.scope_of)
    echo: bool  # it wants its own events too
    paused: bool  # its transport holds enough for now: a replay waits for Relay.resume_replay()

    @property
    def queue_bytes(self) -> int:
        """Unsent bytes it may have before it is disconnected as too slow."""

    @property
    def max_frame_bytes(self) -> int:
        """The longest line it may send (told in `welcome`)."""

    def wants(self, path: str, event: str) -> bool:
        """Whether an event is for it (its `hello.subscribe`)."""

    def send(self, frame: bytes) -> None:
        """Queue a frame for it, without blocking."""

    def peer_gone(self) -> bool:
        """Whether its app has closed its side (though the daemon may not have read that yet), or it is closing."""

    def close(self, last_frame: bytes | None = None) -> None:
        """Send `last_frame`, then disconnect it; it leaves the relay once gone."""
