"""HMAC-SHA256 signatures on broker messages, so a stranger on a shared broker cannot inject or replay events.

A signed message is one header line, then the codec's body:

    syncar-sig1 <key id> <unix time> <nonce> <hex mac>\\n<body>

The MAC covers the key id, time, nonce and body. A receiver accepts a message
only if the key id names one of its keys, the MAC matches, the time is within
the window of its own clock, and it has not seen the nonce in that window.
Keys come from a file, one per line: the first signs, all verify, so keys can
be rotated by adding the new one second, then moving it first, then dropping
the old one.
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
    def __init__(self, keys: list[bytes], window: float) -> None:
        self._signing_key = keys[0]
        self._signing_id = key_id(keys[0])
        self._keys = {key_id(key): key for key in keys}
        self._window = window
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # nonce -> time it was signed, oldest first

    def _mac(self, key: bytes, header: bytes, body: bytes) -> bytes:
        return hmac.new(key, header + b"\n" + body, hashlib.sha256).hexdigest().encode()

    def sign(self, body: bytes) -> bytes:
        header = b"%s %s %d %s" % (MAGIC, self._signing_id, int(time.time()), secrets.token_hex(12).encode())
        return header + b" " + self._mac(self._signing_key, header, body) + b"\n" + body

    def verify(self, message: bytes) -> bytes:
        """The body of a message that is authentic, fresh and new.

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
        now = time.time()
        signed_at = float(stamp) if stamp.isdigit() else 0.0
        if abs(now - signed_at) > self._window:
            raise CodecError("stale", f"message was signed {now - signed_at:.0f}s ago, outside the window")
        self._forget_before(now - self._window)
        if nonce in self._seen:
            raise CodecError("replayed", "message was seen before")
        self._seen[nonce] = signed_at
        return body

    def _forget_before(self, oldest: float) -> None:
        seen = self._seen
        while seen and (len(seen) > MAX_NONCES or next(iter(seen.values())) < oldest):
            seen.popitem(last=False)


class SignedCodec(Codec):
    """Wraps a codec: signs every body it packs, verifies every body before unpacking it."""

    name = "signed"

    def __init__(self, inner: Codec, signer: Signer) -> None:
        super().__init__(inner.instance_id)
        self._inner = inner
        self._signer = signer

    def pack(self, events: list[Outgoing]) -> list[bytes]:
        return [self._signer.sign(body) for body in self._inner.pack(events)]

    def echoed(self, body: bytes) -> int:
        # Unverified, which is harmless: a forger could only make us drop its forgery.
        return self._inner.echoed(body.partition(b"\n")[2])

    def unpack(self, body: bytes) -> Batch:
        return self._inner.unpack(self._signer.verify(body))
