"""Deadlines for tests that wait on real processes, stretched to the machine that runs them.

A timeout in a test is what the reference machine needs, with room to spare: one that runs a
10-million-step Python loop in 0.65 s. A slower or busier machine multiplies every timeout by
`timeout_scale()`, so a test waits longer for a slow worker instead of failing, and still fails
when what it waits for never happens.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SCALE_VARIABLE = "TEST_TIMEOUT_SCALE"
# A fixed CPU loop and how long the reference machine takes for it: cheap enough to time once per
# run, long enough to feel a busy core (a slice of the scheduler is a few milliseconds).
CALIBRATION_STEPS = 1_000_000
REFERENCE_SECONDS = 0.065
POLL_SECONDS = 0.1


def _calibration_seconds() -> float:
    """Wall-clock time of the fixed loop here and now: CPU speed and the load of other processes."""
    start = time.perf_counter()
    for _ in range(CALIBRATION_STEPS):
        pass
    return time.perf_counter() - start


@functools.cache
def timeout_scale() -> float:
    """The factor applied to every timeout of this run: TEST_TIMEOUT_SCALE when set (a positive
    number), else how many times slower than the reference this machine runs the fixed loop,
    never below 1. Measured once per run. Raises ValueError for a TEST_TIMEOUT_SCALE that is not
    a positive number."""
    given = os.environ.get(SCALE_VARIABLE)
    if given:
        scale = float(given)
        if not scale > 0:
            raise ValueError(f"{SCALE_VARIABLE} must be a positive number, got {given!r}")
        return scale
    return max(1.0, _calibration_seconds() / REFERENCE_SECONDS)


def scale_source() -> str:
    """Where the factor comes from, for the test report's header."""
    return SCALE_VARIABLE if os.environ.get(SCALE_VARIABLE) else "measured"


def scaled(seconds: float) -> float:
    """`seconds` on the reference machine, as seconds on this one."""
    return seconds * timeout_scale()


class Deadline:
    """The moment `seconds` (reference seconds, scaled) after its creation, plus `wall_seconds`
    as they are: the time until something the clock decides, such as a simulated market's move."""

    def __init__(self, seconds: float, wall_seconds: float = 0.0) -> None:
        self.seconds = scaled(seconds) + max(0.0, wall_seconds)
        self._at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self._at - time.monotonic())

    def passed(self) -> bool:
        return time.monotonic() >= self._at


def wait_until(
    predicate: Callable[[], T], timeout: float = 30, what: str = "condition", wall_seconds: float = 0.0
) -> T:
    """Poll `predicate` until it returns something true, and return that. `timeout` is in
    reference seconds (scaled), `wall_seconds` is added as it is (see Deadline); past both, with
    one last look, the test fails saying `what` did not happen in time."""
    deadline = Deadline(timeout, wall_seconds)
    while True:
        value = predicate()
        if value:
            return value
        if deadline.passed():
            raise AssertionError(f"{what} not reached within {deadline.seconds:.0f}s")
        time.sleep(POLL_SECONDS)
