from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def topic() -> str:
    """A fresh topic per test, so nothing another test left on the broker can arrive."""
    return f"test-{uuid.uuid4().hex}"
