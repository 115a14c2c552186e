"""syncar: an event-propagation sidecar for Feathers-style service events."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
