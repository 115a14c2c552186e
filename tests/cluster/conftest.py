"""What the cluster tests share: backends on a cluster's URI (`await backends.on(uri, mode)`), closed when the test
ends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.backends.support import Started


@pytest.fixture
async def backends() -> AsyncIterator[Started]:
    made = Started()
    yield made
    await made.close()
