from __future__ import annotations

import pytest

from sidecar.codec import NULL
from sidecar.errors import FrameError
from sidecar.protocol import decode, fast_publish, parse_hello, parse_publish, readable_id


def test_publish_defaults() -> None:
    for publish in (parse_publish({"type": "publish", "path": "messages", "event": "created"}),
                    fast_publish(b'{"type":"publish","path":"messages","event":"created"}')):
        assert publish is not None
        assert (publish.data, publish.context, publish.id, publish.ack) == (NULL, NULL, None, False)


@pytest.mark.parametrize("line", [
    b'{"path":"m","event":"e"}', b'{"type":"ping","path":"m","event":"e"}',
    b'{"type":"publish","path":"","event":"e"}', b'{"type":"publish","path":"m","event":"e","ack":true}',
    b'{"type":"publish","path":"m","event":"e","ack":1,"id":"1"}',
    b'{"type":"publish","path":"m","event":"e","id":""}', b'{"type":"publish","path":"m","event":"e","data":"\xff"}',
    b'{"type":"publish","path":"m","event":"e","data":[1,]}',
])
def test_fast_publish_leaves_everything_but_a_valid_publish_to_the_slow_path(line: bytes) -> None:
    assert fast_publish(line) is None


def test_fast_publish_keeps_data_and_context_as_sent() -> None:
    publish = fast_publish(b'{"type":"publish","path":"m","event":"e","data":{"b": 1,"a":2},"context":[1],"id":"x"}')
    assert publish is not None
    assert (bytes(publish.data), bytes(publish.context), publish.id) == (b'{"b": 1,"a":2}', b"[1]", "x")


@pytest.mark.parametrize("line", [b"{", b"\xff", b"[]", b"{}", b'{"type":1}'])
def test_decode_rejects(line: bytes) -> None:
    with pytest.raises(FrameError):
        decode(line)


def test_hello_patterns() -> None:
    hello = parse_hello({"type": "hello", "subscribe": ["messages", {"event": "removed"}]}, 1024)
    patterns = hello.subscribe
    assert patterns is not None
    assert [(p.path, p.event) for p in patterns] == [("messages", "*"), ("*", "removed")]
    assert parse_hello({"type": "hello"}, 1024).subscribe is None


def test_hello_ignores_unknown_fields_and_checks_version() -> None:
    assert parse_hello({"type": "hello", "future": 1}, 1024).version == 1
    with pytest.raises(FrameError) as info:
        parse_hello({"type": "hello", "version": 2}, 1024)
    assert info.value.code == "unsupported_version"


@pytest.mark.parametrize(("line", "expected"), [
    (b'{"type":"publish","id":"a1","data":1}', "a1"),
    (b'{"data":{"id":"inner"},"ack":true,"id":"outer"', "outer"),  # cut short: still readable
    (b'{"id" : "\\u00e9\\"q"}', 'é"q'),
    (b'{"id":5,"x":"y"}', None),
    (b'{"a":["id",":","x"],"b":"id"}', None),
    (b'["id","x"]', None),
    (b'{"data":"a \\"id\\":\\"forged', None),  # inside a string cut short
    (b'{"data":"' + b"x" * 5000 + b'","id":"late"}', None),  # beyond the head
    (b"\xff\xfe garbage", None),
])
def test_readable_id(line: bytes, expected: str | None) -> None:
    assert readable_id(line) == expected
