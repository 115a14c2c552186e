"""syncar: an event-propagation sidecar for Feathers-style service events."""

from __future__ import annotations

__version__ = "0.1.0"
#: The app protocol's version (docs/protocol.md). Here rather than in sidecar.protocol, so that the Python client
#: gets it without importing the daemon's validation (pydantic, msgspec): ~100 ms of CPU at every start of an app.
PROTOCOL_VERSION = 1
#: The longest id the protocol takes, an event's or a `client_id` (docs/protocol.md); here for the same reason.
MAX_ID_LENGTH = 256

__all__ = ["MAX_ID_LENGTH", "PROTOCOL_VERSION", "__version__"]
