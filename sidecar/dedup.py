"""The identity of events on the bus, made by the daemon (the memory of seen ones, by that identity, is
sidecar/seen.py).

An event's id on the bus is made by the daemon its app published through, and no app can choose another app's:

- `<scope>.<id>` when the app named the event `<id>`. `<scope>` is 16 base64url characters (96 bits) of an
  HMAC-SHA256 of the app's `client_id`: an app can only publish in its own scope, so two apps that use the same
  ids (by accident, or because one predicts the other's) still publish different events. An app that reconnects
  with the same `client_id` and sends an event again gets the same id for it, so the receivers drop the resend.
  The `client_id` never leaves the daemon, and the hash does not give it away: only an app that knows it can
  publish in its scope.
- `<run>:<n>` when the app gave no id: `<run>` is 16 random base64url characters drawn when the daemon starts,
  `<n>` counts. No app can publish an id of this shape (every id it names gets a scope and a `.`), so however
  predictable the next one is, nobody can take it first.

Receivers compare `(origin, id)`; the origin is the instance id of the publishing daemon.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets

#: Bytes of the HMAC kept in a scope: 96 bits, 16 base64url characters.
SCOPE_BYTES = 12


class EventIds:
    """Makes the bus ids of one daemon's events.

    `key` keys the scopes' HMAC, and must stay the same across restarts of the daemon for a resend after a restart
    to be recognised: the daemon passes its first signing key when signing is on (then no one without the key can
    even test a guess of a `client_id` against a scope), else its instance id.
    """

    __slots__ = ("_count", "_key", "_run")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._run = secrets.token_urlsafe(SCOPE_BYTES) + ":"
        self._count = itertools.count(1)

    def scope(self, client_id: str) -> str:
        """What the ids an app with this `client_id` chooses are prefixed with on the bus."""
        digest = hmac.digest(self._key, client_id.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return base64.urlsafe_b64encode(digest[:SCOPE_BYTES]).decode() + "."

    def new(self) -> str:
        """An id for an event its app did not name."""
        return f"{self._run}{next(self._count)}"
