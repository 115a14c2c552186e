"""The `hello` frame: its patterns, its unknown fields, its version (its limits: tests/daemon/test_bad_input.py,
tests/security/test_limits.py)."""

from __future__ import annotations

import pytest

from sidecar.errors import FrameError
from sidecar.hello import parse_hello


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
