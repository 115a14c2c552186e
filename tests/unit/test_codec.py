from __future__ import annotations

import base64

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.codec import Event, FeathersSyncCodec, Outgoing, SyncarCodec, encode
from sidecar.errors import CodecError
from sidecar.metrics import DropReason


def outgoing(event_id: str, data: object, context: object = None, event: str = "created") -> Outgoing:
    if context is None and event == "created":
        context = {"params": {}}
    outgoing = Event(
        event_id, 1.5, event, "messages", msgspec.Raw(orjson.dumps(data)), msgspec.Raw(orjson.dumps(context))
    )
    return Outgoing(outgoing, encode(outgoing), 0.0)


def test_syncar_batch_round_trip() -> None:
    codec = SyncarCodec("node-a")
    [body] = codec.pack([outgoing("1", {"t": "é"}), outgoing("2", [1, 2])])
    batch = SyncarCodec("node-b").unpack(body)
    assert batch.origin == "node-a"
    assert [(e.id, orjson.loads(bytes(e.data)), e.time) for e in batch.events] == [
        ("1", {"t": "é"}, 1.5),
        ("2", [1, 2], 1.5),
    ]


def test_feathers_sync_body_is_exactly_what_feathers_sync_sends() -> None:
    [body] = FeathersSyncCodec("a").pack([outgoing("1", {"text": "hi"})])
    assert body == b'{"event":"created","path":"messages","data":{"text":"hi"},"context":{"params":{}}}'


def test_feathers_sync_leaves_out_a_missing_context_as_json_stringify_does() -> None:
    [body] = FeathersSyncCodec("a").pack([outgoing("1", 1, event="typing")])
    assert body == b'{"event":"typing","path":"messages","data":1}'


def test_feathers_sync_echo_is_recognised_once() -> None:
    codec = FeathersSyncCodec("me")
    [body] = codec.pack([outgoing("1", 1)])
    assert codec.echoed(body) == 1
    assert codec.echoed(body) == 0  # the same bytes again came from someone else
    assert codec.unpack(body).origin is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "malformed"),
        (b'{"event":"created","path":"m"}', "foreign"),
        (b'{"v":2,"origin":"x","events":[]}', "foreign"),
        (b'{"v":1,"origin":5,"events":[]}', "malformed"),
        (b'{"v":1,"origin":"x","events":[{"event":"e","path":"p"}]}', "malformed"),
        (b'{"v":1,"origin":"x","events":[7]}', "malformed"),
        (b'{"v":1,"origin":"x","events":[{"id":"1","time":1,"event":"e","path":"p","data":"\xff"}]}', "malformed"),
        (b'{"v":1,"origin":"x","events":[{"id":"1","time":null,"event":"e","path":"p"}]}', "malformed"),
        (b'{"v":1,"origin":"x","events":[{"id":"1","time":1,"event":"","path":"p"}]}', "malformed"),
    ],
)
def test_syncar_rejects(body: bytes, reason: str) -> None:
    with pytest.raises(CodecError) as info:
        SyncarCodec("me").unpack(body)
    assert info.value.reason == reason


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
KEYS = st.sampled_from(["v", "origin", "events", "id", "time", "event", "path", "data", "context"]) | st.text()
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6), max_leaves=20
)


@given(st.binary(max_size=300) | JSON.map(orjson.dumps))
def test_decoders_only_ever_raise_codec_error(body: bytes) -> None:
    """Bytes or JSON of any shape: decoded, or refused with the reason the relay counts and a one-line message."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        reasons = {DropReason.MALFORMED}
    else:
        reasons = {DropReason.MALFORMED, DropReason.FOREIGN}
    for codec in (SyncarCodec("me"), FeathersSyncCodec("me")):
        try:
            codec.unpack(body)
        except CodecError as exc:
            assert exc.reason in reasons, (type(codec).__name__, body, exc.reason)
            assert str(exc) and "\n" not in str(exc), (body, str(exc))


def test_syncar_echo_is_recognised_without_decoding_and_counts_its_events() -> None:
    codec = SyncarCodec("me")
    [body] = codec.pack([outgoing('we"ird', 1), outgoing("2", 2), outgoing("3", 3)])
    assert codec.echoed(body) == 3
    assert SyncarCodec("other").echoed(body) == 0
    assert codec.unpack(body).origin == "me"  # decoding still tells, for what echoed() does not catch


def test_raw_line_breaks_between_tokens_never_reach_a_frame() -> None:
    body = b'{"v":1,"origin":"x","events":[{"id":"1","time":1,"event":"e","path":"p","data":{"a":\n1,\r"b":\r\n2}}]}'
    [event] = SyncarCodec("me").unpack(body).events
    assert b"\n" not in encode(event) and b"\r" not in encode(event)
    assert orjson.loads(bytes(event.data)) == {"a": 1, "b": 2}


def test_a_feathers_sync_body_keeps_its_data_bytes() -> None:
    body = b'{"event":"created","path":"messages","data":{"text":"h\\u00e9"},"context":{"params":{}}}'
    [event] = FeathersSyncCodec("me").unpack(body).events
    assert (event.event, event.path, event.time) == ("created", "messages", None)
    assert bytes(event.data) == b'{"text":"h\\u00e9"}'


def test_nesting_too_deep_for_the_decoder_is_malformed_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for codec, body in (
        (
            SyncarCodec("me"),
            b'{"v":1,"origin":"x","events":[{"id":"1","time":1,"event":"e","path":"p","data":' + deep + b"}]}",
        ),
        (FeathersSyncCodec("me"), b'{"event":"e","path":"p","data":' + deep + b"}"),
    ):
        with pytest.raises(CodecError) as info:
            codec.unpack(body)
        assert info.value.reason == "malformed"


def test_feathers_sync_remembers_nothing_for_a_broker_that_does_not_echo() -> None:
    # An identical body from a feathers-sync app must not be taken for one of ours that never came back.
    codec = FeathersSyncCodec("me", broker_echoes=False)
    [body] = codec.pack([outgoing("1", 1)])
    assert codec.echoed(body) == 0


def binary(event_id: str, body: bytes) -> Outgoing:
    event = Event(event_id, 1.5, "created", "messages", bin=base64.b64encode(body).decode())
    return Outgoing(event, encode(event), 0.0)


# A BSON document of 123 bytes: its first byte, the low byte of its length, is "{".
BSON_LIKE = (123).to_bytes(4, "little") + b"\x02text\x00" + (108).to_bytes(4, "little") + b"x" * 107 + b"\x00\x00"


@pytest.mark.parametrize("body", [BSON_LIKE, b"\x82\xa5event\xa7created\xa4path\xa8messages", b"not json"])
def test_feathers_sync_passes_a_binary_body_through_byte_for_byte(body: bytes) -> None:
    """What a binary serializer made goes on the broker as those bytes (as feathers-sync publishes a Buffer), and
    comes back as the same bytes in `bin`, event and path unknown to syncar."""
    assert len(BSON_LIKE) == 123
    assert FeathersSyncCodec("a").pack([binary("1", body)]) == [body]
    [event] = FeathersSyncCodec("b").unpack(body).events
    assert (event.event, event.path, bytes(event.data), base64.b64decode(event.bin or "")) == ("", "", b"null", body)
    assert b'"bin":' in encode(event)


def test_syncar_batch_carries_binary_events_and_leaves_bin_out_of_the_others() -> None:
    [body] = SyncarCodec("a").pack([binary("1", BSON_LIKE), outgoing("2", 2)])
    first, second = SyncarCodec("b").unpack(body).events
    assert (first.event, first.path, base64.b64decode(first.bin or "")) == ("created", "messages", BSON_LIKE)
    assert second.bin is None
    assert b'"bin"' not in encode(second)


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_syncar_batch_carries_trace_context_and_leaves_it_out_when_unset() -> None:
    traced = Event("1", 1.5, "created", "messages", traceparent=TRACEPARENT, tracestate="rojo=1", bin="AAAA")
    plain = outgoing("2", 2)
    [body] = SyncarCodec("a").pack([Outgoing(traced, encode(traced), 0.0), plain])
    first, second = SyncarCodec("b").unpack(body).events
    assert (first.traceparent, first.tracestate, second.traceparent, second.tracestate) == (
        TRACEPARENT,
        "rojo=1",
        None,
        None,
    )
    assert encode(first).endswith(b',"bin":"AAAA"}')  # bin stays the last field of a frame (docs/protocol.md)
    assert b"trace" not in plain.part


def test_feathers_sync_leaves_trace_context_out_of_its_fixed_format() -> None:
    traced = Event("1", 1.5, "created", "messages", msgspec.Raw(b"1"), traceparent=TRACEPARENT)
    [body] = FeathersSyncCodec("a").pack([Outgoing(traced, encode(traced), 0.0)])
    assert body == b'{"event":"created","path":"messages","data":1}'
