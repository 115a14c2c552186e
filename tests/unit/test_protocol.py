from __future__ import annotations

import pytest

from sidecar.errors import FrameError
from sidecar.protocol import decode, parse_hello, parse_publish


def test_publish_defaults() -> None:
    publish = parse_publish({"type": "publish", "path": "messages", "event": "created"})
    assert (publish.data, publish.context, publish.id, publish.ack) == (None, None, None, False)


@pytest.mark.parametrize("line", [b"{", b"\xff", b"[]", b"{}", b'{"type":1}'])
def test_decode_rejects(line: bytes) -> None:
    with pytest.raises(FrameError):
        decode(line)


def test_hello_patterns() -> None:
    hello = parse_hello({"type": "hello", "subscribe": ["messages", {"event": "removed"}]})
    patterns = hello.patterns()
    assert patterns is not None
    assert [(p.path, p.event) for p in patterns] == [("messages", "*"), ("*", "removed")]
    assert parse_hello({"type": "hello"}).patterns() is None


def test_hello_ignores_unknown_fields_and_checks_version() -> None:
    assert parse_hello({"type": "hello", "future": 1}).version == 1
    with pytest.raises(FrameError) as info:
        parse_hello({"type": "hello", "version": 2})
    assert info.value.code == "unsupported_version"
