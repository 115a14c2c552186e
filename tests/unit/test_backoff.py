from __future__ import annotations

import random
from typing import TypedDict

import pytest

from sidecar.backoff import Backoff


class Shape(TypedDict, total=False):
    """Backoff's keyword arguments that shape the delays."""

    factor: float
    jitter: float


def test_doubles_from_initial_to_the_cap_without_jitter() -> None:
    backoff = Backoff(0.1, 1.0, jitter=0)
    assert [round(backoff.next(), 6) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert backoff.attempts == 7


def test_reset_starts_again_from_initial() -> None:
    backoff = Backoff(0.25, 8.0, factor=3, jitter=0)
    assert [backoff.next() for _ in range(3)] == [0.25, 0.75, 2.25]
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next() == 0.25


def test_jitter_spreads_each_delay_below_its_step_and_never_above_the_cap() -> None:
    backoff = Backoff(0.1, 2.0, jitter=0.5, rng=random.Random(7))
    steps = [0.1, 0.2, 0.4, 0.8, 1.6, *[2.0] * 995]
    delays = [backoff.next() for _ in steps]
    assert all(step / 2 <= delay <= step for step, delay in zip(steps, delays, strict=True))
    at_cap = delays[5:]
    assert max(at_cap) <= 2.0 and min(at_cap) >= 1.0
    assert max(at_cap) - min(at_cap) > 0.9, "a fleet retrying together must spread out"


def test_a_long_outage_neither_overflows_nor_leaves_the_cap() -> None:
    backoff = Backoff(0.1, 5.0, factor=10, jitter=0)
    for _ in range(10_000):
        assert backoff.next() <= 5.0
    assert backoff.next() == 5.0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 1.0), {}, "initial"),
        ((2.0, 1.0), {}, "initial"),
        ((0.1, 1.0), {"factor": 0.5}, "factor"),
        ((0.1, 1.0), {"jitter": 1.5}, "jitter"),
    ],
)
def test_a_policy_that_is_not_one_is_refused(args: tuple[float, float], kwargs: Shape, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(*args, **kwargs)
