"""What a subscriber worker counts: every event, whether it counts them one by one or a read at a time."""

from __future__ import annotations

from pathlib import Path

from bench.flow import Flow
from bench.tally import COUNT_EVERY, Spec, Tally


def _tally(tmp_path: Path) -> tuple[Tally, Flow]:
    flow = Flow(tmp_path / "flow", create=True)
    spec = Spec("sub", "nats", "", "k", 256, 0, 1.0, 1000, 100, str(tmp_path / "flow"), 10.0, False)
    return Tally(spec), flow


def test_events_counted_one_by_one_reach_the_publisher_in_steps_and_all_at_the_end(tmp_path: Path) -> None:
    tally, flow = _tally(tmp_path)
    for _ in range(COUNT_EVERY - 1):
        tally.one()
    assert flow.received == 0  # not yet
    tally.one()
    assert flow.received == COUNT_EVERY  # the publisher's window moves on
    for _ in range(3):
        tally.one()
    flow.finish(COUNT_EVERY + 3)
    assert tally.finished()  # asked, it counts what it holds: every event sent has come
    assert flow.received == tally.received == COUNT_EVERY + 3
    assert tally.result()["received"] == COUNT_EVERY + 3
