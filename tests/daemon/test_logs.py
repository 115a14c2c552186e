"""The daemon's log lines as an operator's collector reads them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from tests.utils import SpawnedDaemon

RFC3339_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def test_json_log_time_is_rfc3339_utc_with_milliseconds(sock: Path) -> None:
    # A zone far from UTC: a local time would be off by hours, and one without a zone is ambiguous.
    daemon = SpawnedDaemon(sock, "--log-format", "json", env={"TZ": "Asia/Kathmandu"})
    try:
        await daemon.ready()
        started = datetime.now(UTC)
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
    lines = [orjson.loads(line) for line in daemon.log.splitlines()]
    assert lines, "no log lines"
    for line in lines:
        assert RFC3339_UTC_MS.fullmatch(line["time"]), line
        logged = datetime.fromisoformat(line["time"])
        assert abs(logged - started) < timedelta(minutes=5), (line, started)
    assert any(not line["time"].endswith(".000Z") for line in lines), "milliseconds are always zero"
