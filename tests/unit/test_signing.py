from __future__ import annotations

import time
from pathlib import Path

import pytest

from sidecar.codec import CODECS
from sidecar.errors import CodecError, ConfigError
from sidecar.signing import SignedCodec, Signer, load_keys

OLD = b"old-key-0123456789abcdef"
NEW = b"new-key-0123456789abcdef"


def reason(signer: Signer, message: bytes) -> str:
    with pytest.raises(CodecError) as info:
        signer.verify(message)
    return info.value.reason


def test_round_trip_and_replay() -> None:
    signer = Signer([OLD], window=60)
    message = Signer([OLD], window=60).sign(b'{"v":1}')
    assert signer.verify(message) == b'{"v":1}'
    assert reason(signer, message) == "replayed"


def test_forged_tampered_and_unsigned() -> None:
    signer = Signer([OLD], window=60)
    assert reason(signer, b'{"v":1}') == "unsigned"
    assert reason(signer, Signer([b"stranger-key-0123456789"], 60).sign(b"x")) == "unknown_key"
    genuine = Signer([OLD], 60).sign(b'{"data":1}')
    assert reason(signer, genuine.replace(b'{"data":1}', b'{"data":2}')) == "bad_signature"
    head, _, body = genuine.partition(b"\n")
    fields = head.split(b" ")
    fields[2] = str(int(time.time()) + 1).encode()  # move the timestamp: the MAC covers it
    assert reason(signer, b" ".join(fields) + b"\n" + body) == "bad_signature"


def test_stale_messages_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = Signer([OLD], window=5).sign(b"x")
    later = time.time() + 10
    monkeypatch.setattr(time, "time", lambda: later)
    assert reason(Signer([OLD], window=5), message) == "stale"


def signed_at(moment: float, body: bytes, monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setattr(time, "time", lambda: moment)
    message = Signer([OLD], window=5).sign(body)
    monkeypatch.undo()
    return message


def test_broker_time_judges_a_backlog_fresh_and_a_republished_message_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    hour_ago = time.time() - 3600
    old = signed_at(hour_ago, b"old", monkeypatch)
    signer = Signer([OLD], window=5, backlog=86_400)
    assert signer.verify(old, accepted_at=hour_ago + 0.2) == b"old"  # stored by the broker when it was signed
    assert reason_at(signer, signed_at(hour_ago, b"again", monkeypatch), time.time()) == "stale"  # stored just now
    assert signer.verify(Signer([OLD], window=5).sign(b"now"), accepted_at=time.time()) == b"now"
    # A broker time ahead of ours (an entry id from the future) is not believed: judged as without one.
    assert reason_at(signer, signed_at(hour_ago, b"x", monkeypatch), time.time() + 3600) == "stale"


def test_without_broker_time_a_backlog_is_judged_by_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    signer = Signer([OLD], window=5, backlog=86_400)
    assert reason(signer, signed_at(now - 2 * 86_400, b"older than the backlog", monkeypatch)) == "stale"
    first = signed_at(now - 3600, b"first", monkeypatch)
    assert signer.verify(first) == b"first"
    assert signer.verify(signed_at(now - 3598, b"second", monkeypatch)) == b"second"
    third = signed_at(now - 1800, b"third", monkeypatch)
    assert signer.verify(third) == b"third"
    assert reason(signer, first) == "stale"  # re-published after newer ones
    assert reason(signer, third) == "replayed"
    assert reason(Signer([OLD], window=5), signed_at(now - 3600, b"x", monkeypatch)) == "stale"  # broadcast: now


def reason_at(signer: Signer, message: bytes, accepted_at: float) -> str:
    with pytest.raises(CodecError) as info:
        signer.verify(message, accepted_at)
    return info.value.reason


def test_rotation_first_key_signs_all_verify() -> None:
    rotating = Signer([NEW, OLD], 60)
    old_only = Signer([OLD], 60)
    assert rotating.verify(old_only.sign(b"a")) == b"a"
    assert reason(old_only, rotating.sign(b"b")) == "unknown_key"
    assert Signer([OLD, NEW], 60).verify(rotating.sign(b"c")) == b"c"


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-11\n{NEW.decode()}\n\n{OLD.decode()}\n")
    assert load_keys(path) == [NEW, OLD]
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        load_keys(path)
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no key"):
        load_keys(path)


def test_a_signed_codec_carries_ids_if_the_codec_it_wraps_does() -> None:
    # The outbox sends an unconfirmed batch again only if receivers can drop the copy by id.
    for codec in CODECS.values():
        assert SignedCodec(codec("a"), Signer([OLD], window=60)).carries_ids is codec.carries_ids
    assert not CODECS["feathers-sync"].carries_ids
