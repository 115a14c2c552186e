"""backends.deadlines: asyncio.timeout() for a section entered again and again, with one timer among them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from backends.deadlines import Deadlines


async def test_a_section_past_its_time_ends_in_timeout_error() -> None:
    deadlines = Deadlines(0.05)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadlines:
            await asyncio.sleep(10)
    assert time.monotonic() - began < 5
    async with deadlines:  # and the next one is bounded as well, and may end in time
        await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with deadlines:
            await asyncio.sleep(10)


async def test_sections_in_time_share_one_timer() -> None:
    deadlines = Deadlines(5.0)
    loop = asyncio.get_running_loop()
    timers: list[Any] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(callback)
        return call_at(when, callback, *args, **kwargs)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(loop, "call_at", counting)
            for _ in range(100):
                async with deadlines:
                    await asyncio.sleep(0)
    finally:
        deadlines.close()
    assert len(timers) == 1  # asyncio.timeout: 100


async def test_sections_of_two_tasks_each_time_out_on_their_own() -> None:
    deadlines = Deadlines(0.2)
    quick_done = asyncio.Event()

    async def quick() -> None:
        async with deadlines:
            await asyncio.sleep(0.01)
        quick_done.set()

    async def hung() -> None:
        async with deadlines:
            await asyncio.sleep(10)

    hung_task = asyncio.create_task(hung())
    await asyncio.sleep(0.1)  # the timer is armed for the hung one; the quick one starts later and ends in time
    await quick()
    assert quick_done.is_set()
    with pytest.raises(TimeoutError):
        await hung_task


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    deadlines = Deadlines(5.0)

    async def section() -> None:
        async with deadlines:
            await asyncio.sleep(10)

    task = asyncio.create_task(section())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()
