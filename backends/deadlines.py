"""`asyncio.timeout()` for a section a backend enters for every publish, with one timer among them all.

`asyncio.timeout(s)` arms a timer at each entry and cancels it at the exit. Under uvloop each is a libuv timer made
and closed, and a closed handle makes the next turn of the loop poll with a zero timeout: at 1,000 publishes a
second that is 1,000 timers and 1,000 turns of the loop that find nothing (docs/benchmarks/history.md, "Third round:
loop wake-ups"). `Deadlines` arms one
timer when a section starts and none is armed; when it fires, it times out the sections whose time is up, exactly as
`asyncio.timeout` would (the section's task is cancelled, and the cancellation comes out of the section as
`TimeoutError`), and moves itself to the end of the oldest section left, or stays unarmed when none is. Sections
all last the same `seconds`, so a later one never ends before the timer: one timer every `seconds` at most.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

#: A timer may fire up to this much before its time by the loop's clock (libuv rounds to milliseconds).
EARLY = 0.002


class _Section:
    __slots__ = ("cancelling", "ends", "expired")

    def __init__(self, ends: float, cancelling: int) -> None:
        self.ends, self.cancelling, self.expired = ends, cancelling, False


class Deadlines:
    """`async with deadlines:` bounds its body to `seconds`, as `async with asyncio.timeout(seconds):` does.

    One task at a time per section, several tasks at once (a backend's outbox and its announcements).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._sections: dict[asyncio.Task[object], _Section] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        loop = self._loop
        if self._timer is None:  # none armed: the loop may be another one (a test's) since
            self._loop = loop = asyncio.get_running_loop()
        assert loop is not None
        task = asyncio.current_task(loop)  # given the loop: no get_running_loop(), a getpid() each on Python 3.11
        if task is None:
            raise RuntimeError("Deadlines must be used in a task")
        ends = loop.time() + self.seconds
        self._sections[task] = _Section(ends, task.cancelling())
        if self._timer is None:
            self._timer = loop.call_at(ends, self._check)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        loop = self._loop
        assert loop is not None
        task = asyncio.current_task(loop)
        assert task is not None
        section = self._sections.pop(task)
        # As asyncio.timeout: our cancellation, and no other since, is a timeout.
        if section.expired and task.uncancel() <= section.cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _check(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        now = loop.time()
        next_end = None
        for task, section in self._sections.items():
            if section.expired:
                continue
            if section.ends - EARLY <= now:
                section.expired = True
                task.cancel()
            elif next_end is None or section.ends < next_end:
                next_end = section.ends
        if next_end is not None:
            self._timer = loop.call_at(next_end, self._check)

    def close(self) -> None:
        """Disarm the timer (the sections still open are not timed out any more)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
