"""The one retry policy of every reconnect loop: capped exponential back-off with jitter.

Pure and stdlib-only, so the backends, the outbox and the Python client share it
without importing anything else of syncar's.
"""

from __future__ import annotations

import random

#: The reconnect loops' defaults: a first retry within 0.1 s, doubling up to the cap. The cap is the
#: `--reconnect-max-delay` setting; 1 s keeps the documented recovery (docs/reliability.md: within 2 s).
DEFAULT_INITIAL = 0.1
DEFAULT_CAP = 1.0
DEFAULT_FACTOR = 2.0
#: Each delay is drawn from the upper half of its step: a fleet that lost its broker together spreads out.
DEFAULT_JITTER = 0.5


class Backoff:
    """Delays between attempts: `initial`, then times `factor` after each attempt, never above `cap`.

    Each delay is drawn at random from `[step * (1 - jitter), step]`, so a delay never exceeds the cap and
    daemons that failed at the same moment do not retry in lockstep. `next()` gives the delay before the
    next attempt and counts it; `reset()`, after a success, starts again from `initial`.

    Raises:
        ValueError: from the constructor, for a policy that is not one (`initial` above `cap`, a factor below 1,
            a jitter outside 0..1).
    """

    __slots__ = ("_random", "_step", "attempts", "cap", "factor", "initial", "jitter")

    def __init__(
        self,
        initial: float = DEFAULT_INITIAL,
        cap: float = DEFAULT_CAP,
        *,
        factor: float = DEFAULT_FACTOR,
        jitter: float = DEFAULT_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError(f"backoff: initial ({initial}) must be above 0 and at most cap ({cap})")
        if factor < 1:
            raise ValueError(f"backoff: factor ({factor}) must be at least 1")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff: jitter ({jitter}) must be between 0 and 1")
        self.initial, self.cap, self.factor, self.jitter = initial, cap, factor, jitter
        self._random = rng or random.Random()
        self._step = initial
        self.attempts = 0  # delays handed out since the last reset()

    def next(self) -> float:
        """The delay before the next attempt."""
        step = self._step
        # Grown step by step rather than initial * factor ** attempts, which overflows after a long outage.
        self._step = min(step * self.factor, self.cap)
        self.attempts += 1
        return step * (1.0 - self.jitter * self._random.random())

    def reset(self) -> None:
        """The attempt worked: the next failure starts again from `initial`."""
        self._step = self.initial
        self.attempts = 0
