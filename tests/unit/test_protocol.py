from __future__ import annotations

import functools

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import protocol, tracecontext
from sidecar.codec import NULL, Event, encode
from sidecar.errors import FrameError
from sidecar.hello import parse_hello
from sidecar.protocol import ErrorCode, decode, fast_publish, parse_publish, readable_id
from tests.utils import REPO


def test_publish_defaults() -> None:
    for publish in (
        parse_publish({"type": "publish", "path": "messages", "event": "created"}),
        fast_publish(b'{"type":"publish","path":"messages","event":"created"}'),
    ):
        assert publish is not None
        assert (publish.data, publish.context, publish.id, publish.ack) == (NULL, NULL, None, False)


@pytest.mark.parametrize(
    "line",
    [
        b'{"path":"m","event":"e"}',
        b'{"type":"ping","path":"m","event":"e"}',
        b'{"type":"publish","path":"","event":"e"}',
        b'{"type":"publish","path":"m","event":"e","ack":true}',
        b'{"type":"publish","path":"m","event":"e","ack":1,"id":"1"}',
        b'{"type":"publish","path":"m","event":"e","id":""}',
        b'{"type":"publish","path":"m","event":"e","data":"\xff"}',
        b'{"type":"publish","path":"m","event":"e","data":[1,]}',
    ],
)
def test_fast_publish_leaves_everything_but_a_valid_publish_to_the_slow_path(line: bytes) -> None:
    assert fast_publish(line) is None


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        ({"bin": "AAEC"}, None),
        ({"bin": "AAE"}, "'bin' is not base64"),
        ({"bin": "AA E="}, "'bin' is not base64"),
        ({"bin": ""}, "'bin' must be a non-empty base64 string"),
        ({"bin": 5}, "'bin' must be a non-empty base64 string"),
        ({"bin": "AAEC", "data": {"a": 1}}, "'data' and 'context' must be null"),
        ({"bin": "AAEC", "context": {}}, "'data' and 'context' must be null"),
    ],
)
def test_publish_of_a_binary_event(frame: dict[str, object], problem: str | None) -> None:
    frame = {"type": "publish", "path": "m", "event": "e", **frame}
    fast = fast_publish(orjson.dumps(frame))
    if problem is None:
        assert fast is not None and fast.bin == frame["bin"]
        assert parse_publish(frame).bin == frame["bin"]
        return
    assert fast is None
    with pytest.raises(FrameError) as info:
        parse_publish(frame)
    assert problem in str(info.value)


def test_fast_publish_keeps_data_and_context_as_sent() -> None:
    publish = fast_publish(b'{"type":"publish","path":"m","event":"e","data":{"b": 1,"a":2},"context":[1],"id":"x"}')
    assert publish is not None
    assert (bytes(publish.data), bytes(publish.context), publish.id) == (b'{"b": 1,"a":2}', b"[1]", "x")


@pytest.mark.parametrize("line", [b"{", b"\xff", b"[]", b"{}", b'{"type":1}'])
def test_decode_rejects(line: bytes) -> None:
    with pytest.raises(FrameError):
        decode(line)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"type":"publish","id":"a1","data":1}', "a1"),
        (b'{"data":{"id":"inner"},"ack":true,"id":"outer"', "outer"),  # cut short: still readable
        (b'{"id" : "\\u00e9\\"q"}', 'é"q'),
        (b'{"id":5,"x":"y"}', None),
        (b'{"a":["id",":","x"],"b":"id"}', None),
        (b'["id","x"]', None),
        (b'{"data":"a \\"id\\":\\"forged', None),  # inside a string cut short
        (b'{"data":"' + b"x" * 5000 + b'","id":"late"}', None),  # beyond the head
        (b"\xff\xfe garbage", None),
    ],
)
def test_readable_id(line: bytes, expected: str | None) -> None:
    assert readable_id(line) == expected


def test_the_frames_syncar_writes_are_those_docs_protocol_shows() -> None:
    """Each builder, given the values of an example in docs/protocol.md, writes that example's line."""
    doc = (REPO / "docs" / "protocol.md").read_text()
    published = fast_publish(b'{"type":"publish","event":"created","path":"messages","id":"evt-77","ack":true}')
    assert published is not None
    event = Event(
        "q3J9x0aZb2Lr8WcT.evt-77",
        1764097442.12,
        "created",
        "messages",
        msgspec.Raw(b'{"id":1,"text":"hi"}'),
        msgspec.Raw(b'{"params":{}}'),
    )
    welcome = functools.partial(
        protocol.welcome,
        instance="web-1-3fa2c1",
        backend="redis",
        broker_up=True,
        epoch="9c1f0e6a4b2d7a55",
        seq=1041,
        client_id="4f9c2e0b7d1a8e3f6b5c9d2a0e7f1b3c",
        resumed=True,
        max_frame_bytes=1048576,
    )
    frames = [
        welcome(),
        welcome(barriers=True),
        protocol.event(1042, b'"web-2-77ab01"', encode(event)),
        protocol.ack("evt-77"),
        protocol.ack("b1"),
        protocol.publish_refused(published, ErrorCode.UNCONFIRMED, "..."),
        protocol.status(backend="redis", broker_up=False, outbox=120),
        protocol.status(backend="nats", broker_up=True, outbox=0, node="127.0.0.1:4223"),
        protocol.gap(origin="web-2-77ab01", run="5b0e2c9d41a7f3e8", first=10521, last=13000, reason="lost"),
        protocol.error(ErrorCode.INVALID_FRAME, "publish: 'path' must be a non-empty string"),
        protocol.PONG,
    ]
    for frame in frames:
        assert frame.endswith(b"\n") and frame.count(b"\n") == 1
        assert frame.decode().rstrip("\n") in doc
    # The last status before the daemon closes a connection; the others say nothing of stopping.
    assert protocol.status(backend="redis", broker_up=True, outbox=0, stopping=True).endswith(b',"stopping":true}\n')
    assert '"stopping":true' in doc
    assert orjson.loads(
        protocol.publish_refused(msgspec.structs.replace(published, ack=False), ErrorCode.OUTBOX_FULL, "full")
    ) == {"type": "error", "code": "outbox_full", "message": "full", "id": "evt-77"}


@pytest.mark.parametrize(
    ("traceparent", "tracestate"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", "k=" + "v" * 510),  # a later version; 512 chars
    ],
)
def test_a_valid_trace_context_is_taken_on_both_paths(traceparent: str, tracestate: str | None) -> None:
    frame = publish_with(traceparent=traceparent, tracestate=tracestate)
    assert tracecontext.problem(traceparent, tracestate) is None
    for publish in (fast_publish(orjson.dumps(frame)), parse_publish(frame)):
        assert publish is not None
        assert (publish.traceparent, publish.tracestate) == (traceparent, tracestate)


def test_a_trace_field_of_another_type_reaches_the_check_as_a_string_it_refuses() -> None:
    frame = publish_with(traceparent={"not": "a string"}, tracestate=["x"])
    assert fast_publish(orjson.dumps(frame)) is None  # msgspec refuses the type: the slow path says what is wrong
    publish = parse_publish(frame)
    assert tracecontext.problem(publish.traceparent, publish.tracestate) is not None
    stripped = protocol.without_trace(publish)
    assert (stripped.traceparent, stripped.tracestate, stripped.path) == (None, None, "messages")


def publish_with(**fields: object) -> dict[str, object]:
    return {"type": "publish", "path": "messages", "event": "created", **fields}


@pytest.mark.parametrize(
    "event",
    [
        Event("a:1", 1.5, "created", "messages", msgspec.Raw(b'{"text":"' + b"x" * 5000 + b'"}'), NULL),
        Event(
            "s.b",
            None,
            "patched",
            "users/1",
            NULL,
            msgspec.Raw(b'{"params":{}}'),
            traceparent="00-ab",
            tracestate="k=v",
        ),
        Event("fs-1", None, "", "", NULL, NULL, bin="AAEC"),
        Event("é\u2028", 2.0, "ünï", 'p\\"ath', msgspec.Raw(b"[1, 2]"), msgspec.Raw(b"null")),
    ],
)
def test_a_received_event_is_framed_as_its_json_would_be(event: Event) -> None:
    # Made just before: a larger one (the scratch holds more than the frame), a shorter one than the frame's head.
    for before in (Event("big", 0.0, "e", "p", msgspec.Raw(b'"' + b"y" * 20000 + b'"')), 1):
        for seq, origin in ((1, b'"there"'), (123456789, b"null")):
            encode(before)
            frame = protocol.received_event(seq, origin, event)
            assert frame == protocol.event(seq, origin, encode(event))
            assert frame.endswith(b"}\n") and frame.count(b"\n") == 1
            assert orjson.loads(frame)["seq"] == seq


GOOD = [
    b'{"type":"publish","path":"m","event":"e","data":{"a":[1,{"b":2}]},"context":{"c":"}\\n{"}}',
    b'{"type":"publish","path":"m","event":"e","id":"1","ack":true,"data":"\xc3\xa9"}',
    b'{ "type" : "publish", "path":"m", "event":"e", "data": [ {}, {} ] }',
]


def fast_path(data: bytes) -> list[protocol.Publish] | None:
    return protocol.fast_publishes(data, 0, len(data))


def test_a_read_of_publishes_decodes_as_its_lines_do_one_by_one() -> None:
    data = b"".join(line + b"\n" for line in GOOD * 3)
    assert fast_path(data) == [fast_publish(line) for line in GOOD * 3]
    # Lines of another read before and after: only those in between are taken.
    start = len(b'"e"}\n')
    assert protocol.fast_publishes(b'"e"}\n' + data + b'{"ty', start, start + len(data)) == fast_path(data)


@pytest.mark.parametrize(
    "data",
    [
        # A value over two lines, and two values on one: each line alone is not JSON. Taken, the line feed inside the
        # data would end another app's frame there, and what follows would be a frame of this app's making.
        b'{"type":"publish","path":"m","event":"e","data":{"x":\n"y"}} {"type":"publish","path":"m","event":"e"}\n',
        b'{"type":"publish","path":"m","event":"e","data":[\n'
        b'{"type":"event","seq":1}]}\n{"type":"publish","path":"m","event":"e"}{"type":"publish","path":"m","event":"e"}\n',
        b'{"type":"publish","path":"m","event":"e"}\n\n',  # a blank line
        b' {"type":"publish","path":"m","event":"e"}\n',
        b'{"type":"publish","path":"m","event":"e","data":"a"}\r\n',
        b'{"type":"publish","path":"m","event":"e","data":"\xff"}\n',
        b'{"type":"publish","path":"m","event":"e"}\n{"type":"ping"}\n',
        b'{"type":"publish","path":"m","event":"e"}\n{"type":"publish","path":"m","event":"e","ack":true}\n',
        b'{"type":"publish","path":"m","event":"e"}\n{"type":"publish","path":"m","event":"e","data":[1,]}\n',
        b'{"type":"publish","path":"m","event":"e","data":' + b"[" * 2000 + b"]" * 2000 + b"}\n",
    ],
)
def test_a_read_with_anything_but_one_valid_publish_a_line_goes_line_by_line(data: bytes) -> None:
    assert fast_path(data) is None


@given(st.lists(st.sampled_from([*GOOD, b"", b" ", b"{", b"}", b"[", b"]", b",", b'"x":1', b"{}"]), max_size=12))
def test_a_read_taken_at_once_is_taken_as_its_lines_would_be(pieces: list[bytes]) -> None:
    data = b"\n".join(pieces) + b"\n"
    publishes = fast_path(data)
    if publishes is not None:
        assert publishes == [fast_publish(line) for line in data.split(b"\n")[:-1]]


def test_a_barrier_needs_an_id_and_hello_asks_for_barriers_with_a_bool() -> None:
    assert protocol.parse_barrier({"type": "barrier", "id": "b-1"}) == "b-1"
    for frame in ({"type": "barrier"}, {"type": "barrier", "id": ""}, {"type": "barrier", "id": 7}):
        with pytest.raises(FrameError, match="barrier: 'id' must be a string of 1 to 256 characters"):
            protocol.parse_barrier(frame)
    assert parse_hello({"type": "hello", "barriers": True}, 8).barriers
    assert not parse_hello({"type": "hello"}, 8).barriers
    with pytest.raises(FrameError, match="hello: barriers: "):
        parse_hello({"type": "hello", "barriers": "yes"}, 8)
