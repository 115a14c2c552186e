"""HMAC-SHA256 signatures on broker messages, so a stranger on a shared broker cannot inject or replay events.

A signed message is one header line, then the codec's body:

    syncar-sig1 <key id> <unix time> <nonce> <hex mac>\\n<body>

The MAC covers the key id, time, nonce and body. A receiver accepts a message
only if the key id names one of its keys, the MAC matches, the time is fresh,
and it has not seen the nonce among the messages that are still fresh. Keys
come from a file, one per line: the first signs, all verify, so keys can be
rotated by adding the new one second, then moving it first, then dropping the
old one.

Fresh means within the window of a reference time that a stranger who
re-publishes a captured message cannot move back to when it was signed:

- the broker's own time of storing the message, where it gives one (durable
  mode on Redis and NATS: `Message.accepted_at`). A durable backlog is then
  fresh however long its instance was away, and a message re-published later
  is stale, since the broker stamps it anew;
- in durable mode on a broker without such a time (RabbitMQ), the newest
  signing time accepted so far, or, before the first message after a start,
  `backlog` seconds (`--instance-ttl`) ago: the queue hands messages over in
  the order the broker took them, so a message re-published after newer ones
  is more than a window older than them;
- in broadcast mode, now: the broker keeps nothing, so a genuine message is
  received right after it was signed.

The outbox signs a batch again before every retry (`refresh`), so a batch held
through a broker outage does not go out with its first, old time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from pathlib import Path

from sidecar.codec import Batch, Codec, Outgoing
from sidecar.errors import CodecError, ConfigError

MAGIC = b"syncar-sig1"
#: The longest signature line: magic, key id, a 12-digit time, nonce and MAC, four spaces and a newline.
SIGNATURE_BYTES = len(MAGIC) + 8 + 12 + 24 + 64 + 5
MIN_KEY_BYTES = 16
#: Nonces remembered at most; at the window's end they expire anyway. Bounds memory under a flood.
MAX_NONCES = 1_000_000


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).hexdigest()[:8].encode()


def load_keys(path: Path) -> list[bytes]:
    """Read keys, one per line; blank lines and `#` comments are skipped.

    Raises:
        ConfigError: unreadable, empty, or a key shorter than 16 bytes.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"signing_key_file: cannot read {path}: {exc.strerror}") from None
    keys = [line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"signing_key_file: {path} holds no key")
    if any(len(key) < MIN_KEY_BYTES for key in keys):
        raise ConfigError(f"signing_key_file: every key must be at least {MIN_KEY_BYTES} characters long")
    return keys


class Signer:
    """Signs and verifies messages; `backlog` (seconds) only in durable mode: how far back a redelivery may go."""

    def __init__(self, keys: list[bytes], window: float, *, backlog: float | None = None) -> None:
        self._signing_key = keys[0]
        self._signing_id = key_id(keys[0])
        self._keys = {key_id(key): key for key in keys}
        self._window = window
        self._backlog = backlog
        self._newest: float | None = None  # the newest signing time accepted (durable mode without broker times)
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # nonce -> time it was signed, oldest first

    def _mac(self, key: bytes, header: bytes, body: bytes) -> bytes:
        return hmac.new(key, header + b"\n" + body, hashlib.sha256).hexdigest().encode()

    def sign(self, body: bytes) -> bytes:
        header = b"%s %s %d %s" % (MAGIC, self._signing_id, int(time.time()), secrets.token_hex(12).encode())
        return header + b" " + self._mac(self._signing_key, header, body) + b"\n" + body

    def verify(self, message: bytes, accepted_at: float | None = None) -> bytes:
        """The body of a message that is authentic, fresh and new; `accepted_at` is the broker's time of it.

        Raises:
            CodecError: reason `unsigned`, `unknown_key`, `bad_signature`, `stale` or `replayed`.
        """
        head, newline, body = message.partition(b"\n")
        fields = head.split(b" ")
        if not newline or len(fields) != 5 or fields[0] != MAGIC:
            raise CodecError("unsigned", "message is not signed")
        _, kid, stamp, nonce, mac = fields
        key = self._keys.get(kid)
        if key is None:
            raise CodecError("unknown_key", "message is signed with a key this syncar does not have")
        if not hmac.compare_digest(mac, self._mac(key, b" ".join(fields[:4]), body)):
            raise CodecError("bad_signature", "message signature does not match its content")
        signed_at = float(stamp) if stamp.isdigit() else 0.0
        reference, earliest, latest = self._bounds(accepted_at)
        if not earliest <= signed_at <= latest:
            raise CodecError(
                "stale",
                f"message was signed {reference - signed_at:.0f}s before its reference time "
                f"(docs/security.md), outside the {self._window:g}s window",
            )
        self._forget_before(earliest)
        if nonce in self._seen:
            raise CodecError("replayed", "message was seen before")
        self._seen[nonce] = signed_at
        if self._newest is None or signed_at > self._newest:
            self._newest = signed_at
        return body

    def _bounds(self, accepted_at: float | None) -> tuple[float, float, float]:
        """The reference time, and the earliest and latest signing times fresh against it."""
        window, now = self._window, time.time()
        # A broker time ahead of ours is not trusted (a Redis client may add an entry with an id in the future,
        # after which every entry id is that far ahead): such a message is judged against now.
        if accepted_at is not None and accepted_at <= now + window:
            return accepted_at, accepted_at - window, accepted_at + window
        if self._backlog is None:
            return now, now - window, now + window
        newest = now - self._backlog if self._newest is None else max(self._newest, now - self._backlog)
        return newest, newest - window, now + window

    def _forget_before(self, oldest: float) -> None:
        seen = self._seen
        while seen and (len(seen) > MAX_NONCES or next(iter(seen.values())) < oldest):
            seen.popitem(last=False)


class SignedCodec(Codec):
    """Wraps a codec: signs every body it packs, verifies every body before unpacking it."""

    name = "signed"

    def __init__(self, inner: Codec, signer: Signer) -> None:
        super().__init__(inner.instance_id)
        self.overhead = inner.overhead + SIGNATURE_BYTES
        self.carries_ids = inner.carries_ids
        self.packs_parts = inner.packs_parts
        self._inner = inner
        self._signer = signer

    def pack(self, events: list[Outgoing], seq: int = 1) -> list[bytes]:
        # The whole body is signed, its run and seq with it: a forger can neither fake nor hide a gap.
        return [self._signer.sign(body) for body in self._inner.pack(events, seq)]

    def refresh(self, bodies: list[bytes]) -> list[bytes]:
        return [self._signer.sign(body.partition(b"\n")[2]) for body in bodies]

    def echoed(self, body: bytes) -> int:
        # Unverified, which is harmless: a forger could only make us drop its forgery.
        return self._inner.echoed(body.partition(b"\n")[2])

    def unpack(self, body: bytes, accepted_at: float | None = None) -> Batch:
        return self._inner.unpack(self._signer.verify(body, accepted_at))
