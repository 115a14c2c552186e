"""What every subscriber worker counts, and when it stops; and the pacing every publisher worker follows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.flow import Flow
from bench.payload import now_us

#: A subscriber whose publisher is done stops once this long passes without an event (the rest were lost).
IDLE_AFTER_DONE = 1.0
#: Seconds between two (time, count) samples of a throughput run.
SAMPLE_EVERY = 0.01
#: Publishers wake this often at most in a run at a fixed rate: the 1 ms timers of Node and uvloop, for all alike.
TICK = 0.001
#: Events written at once at most in a throughput run (one pipeline, one socket write).
CHUNK = 256
#: A subscriber called once per message (the raw ceiling's) counts them this many at a time, as a syncar subscriber
#: counts a read's at once: `add` for each was 0.8 us, a cost of the measuring that only the ceiling paid.
COUNT_EVERY = 16


@dataclass(frozen=True, slots=True)
class Spec:
    """What one worker is told to do (the JSON on its command line)."""

    role: str  # "pub" or "sub"
    kind: str  # "syncar", "redis", "amqp", "nats"
    target: str  # a socket path or a broker URI
    key: str
    size: int
    rate: int  # events per second; 0 means as fast as the window allows
    duration: float  # seconds of publishing at most
    count: int  # events at most
    window: int  # events in flight at most
    flow: str  # the Flow file
    deadline: float  # seconds this worker may live at most
    trace: bool  # a syncar publisher: every publish with W3C trace context

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Spec:
        return cls(**{name: raw[name] for name in cls.__slots__})


class Tally:
    """Counts received events (and their latencies at a fixed rate); knows when to stop."""

    def __init__(self, spec: Spec) -> None:
        self.flow = Flow(Path(spec.flow))
        self.latency = spec.rate > 0
        self.received = 0
        self.started = time.monotonic()
        self.deadline = self.started + spec.deadline
        self.first = self.last = 0.0
        self.samples: list[tuple[float, int]] = []
        self.latencies: list[int] = []
        self.bad = 0
        self._uncounted = 0  # taken by `one` and not yet by `add`

    def one(self) -> None:
        """One event, counted with the others `add` is given every COUNT_EVERY, or by `finished`."""
        self._uncounted += 1
        if self._uncounted == COUNT_EVERY:
            self._catch_up()

    def _catch_up(self) -> None:
        if self._uncounted:
            count, self._uncounted = self._uncounted, 0
            self.add(count)

    def add(self, count: int) -> None:
        now = time.monotonic()
        if not self.received:
            self.first = now
            self.samples.append((now, 0))
        self.received += count
        self.last = now
        self.flow.received = self.received
        if now - self.samples[-1][0] >= SAMPLE_EVERY:
            self.samples.append((now, self.received))

    def stamp(self, t_us: int) -> None:
        self.latencies.append(now_us() - t_us)

    def finished(self) -> bool:
        self._catch_up()
        now = time.monotonic()
        if now > self.deadline:
            return True
        flow = self.flow
        if not flow.done:
            return False
        return self.received >= flow.sent or now - max(self.last, self.started) > IDLE_AFTER_DONE

    def result(self) -> dict[str, Any]:
        self._catch_up()
        self.samples.append((self.last, self.received))
        return {
            "received": self.received,
            "first": self.first,
            "last": self.last,
            "samples": self.samples,
            "latencies_us": self.latencies,
            "bad": self.bad,
            "timed_out": time.monotonic() > self.deadline,
        }


class Pacer:
    """Decides how many events a publisher sends next: a window's worth, or what a fixed rate has made due."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.flow = Flow(Path(spec.flow))
        self.sent = 0
        self.start = time.monotonic()
        self.end = self.start + spec.duration
        self.max_lag = 0.0
        self.ticks = 0

    def next(self) -> tuple[int, float] | None:
        """(events to send now, or else seconds to sleep before asking again); None when the run is over."""
        spec, now = self.spec, time.monotonic()
        if now >= self.end or self.sent >= spec.count:
            return None
        room = spec.window - (self.sent - self.flow.received)
        if room <= 0:
            return 0, 0.0001 if spec.rate == 0 else TICK
        if spec.rate == 0:
            return min(room, CHUNK, spec.count - self.sent), 0.0
        due = min(int((now - self.start) * spec.rate) + 1, spec.count) - self.sent
        if due <= 0:
            # Sleep to the next tick, or to when the next event falls due if that is later (at 100 events/s, 10 ms:
            # a publisher at a low rate wakes once per event, as an app would); what falls due meanwhile goes out
            # together then.
            return 0, max(TICK, self.start + self.sent / spec.rate - now)
        self.max_lag = max(self.max_lag, now - (self.start + self.sent / spec.rate))
        return min(due, room), 0.0

    def sent_now(self, count: int) -> None:
        self.sent += count
        self.ticks += 1

    def finish(self) -> dict[str, Any]:
        self.flow.finish(self.sent)
        elapsed = time.monotonic() - self.start
        return {"sent": self.sent, "elapsed": elapsed, "max_lag": self.max_lag, "writes": self.ticks}
