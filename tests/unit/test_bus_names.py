"""The strings a daemon keeps from the bus are bounded in length: a batch's `origin` and `run`, an announcement's
names. One at MAX_ID_LENGTH is taken; one longer is malformed, and said to be (tests/security/test_bus_names.py has
the daemon drop and count them)."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from sidecar import MAX_ID_LENGTH
from sidecar.codec import SyncarCodec, decode_json
from sidecar.errors import CodecError
from sidecar.fleet import Announcement

LONGEST, TOO_LONG = "é" * MAX_ID_LENGTH, "é" * (MAX_ID_LENGTH + 1)  # characters, not bytes
ANNOUNCEMENTS = msgspec.json.Decoder(Announcement)
EVENT = {"id": "1", "time": 1.0, "event": "created", "path": "messages", "data": None}


def batch(**fields: object) -> bytes:
    return orjson.dumps({"v": 1, "origin": "o", "run": "r", "seq": 1, "events": [EVENT], **fields})


def test_a_batch_with_names_at_the_limit_is_taken() -> None:
    unpacked = SyncarCodec("here").unpack(batch(origin=LONGEST, run=LONGEST))
    assert (unpacked.origin, unpacked.run, len(unpacked.events)) == (LONGEST, LONGEST, 1)


@pytest.mark.parametrize("field", ["origin", "run"])
def test_a_batch_with_a_longer_name_is_malformed(field: str) -> None:
    with pytest.raises(CodecError) as caught:
        SyncarCodec("here").unpack(batch(**{field: TOO_LONG}))
    assert caught.value.reason == "malformed"
    assert str(caught.value) == f"syncar batch has an 'origin' or 'run' over {MAX_ID_LENGTH} characters"


def announcement(**fields: object) -> bytes:
    base = {"v": 1, "instance": "i", "version": "0.1.0", "codec": "syncar", "mode": "broadcast", "seq": 0}
    return orjson.dumps({**base, "started": 1.0, "interval": 5.0, "run": "r", **fields})


@pytest.mark.parametrize("field", ["instance", "version", "codec", "mode", "run"])
def test_an_announcement_takes_names_up_to_the_limit(field: str) -> None:
    taken = decode_json(ANNOUNCEMENTS, announcement(**{field: LONGEST}))
    assert taken is not None
    assert getattr(taken, field) == LONGEST
    assert decode_json(ANNOUNCEMENTS, announcement(**{field: TOO_LONG})) is None
