from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.backends.support import Started


@pytest.fixture
def topic() -> str:
    """A fresh topic per test, so nothing another test left on the broker can arrive."""
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    """`await started(SomeBackend(...))`: a started backend, closed when the test ends."""
    backends = Started()
    yield backends
    await backends.close()
