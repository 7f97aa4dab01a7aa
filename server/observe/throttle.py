"""Throttle: let something happen at most once per interval, counting what was held back.

Used so that network abuse (a flood of over-limit clients, accept() failing with
EMFILE) is logged at most once a second, never once per event. A Throttle belongs to
one thread; it takes no lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Throttle:
    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last = float("-inf")
        self._held_back = 0

    @property
    def held_back(self) -> int:
        """How many were held back since the last one allowed."""
        return self._held_back

    def allow(self) -> int | None:
        """None if held back; otherwise how many were held back since the last one allowed."""
        now = self._clock()
        if now - self._last < self._interval_s:
            self._held_back += 1
            return None
        self._last = now
        held_back, self._held_back = self._held_back, 0
        return held_back
