"""Sliding one-second windows: the throttle's admission count and the busiest-second measure.

A sliding window (not fixed calendar seconds) is used for both: a fixed window lets a client
send twice the limit across a second boundary, which a fair gateway test should catch.
"""

from __future__ import annotations

import math
from collections import deque


class SlidingCount:
    """Events within the last ``window`` seconds, and the most ever seen at once."""

    __slots__ = ("_times", "peak", "window")

    def __init__(self, window: float = 1.0) -> None:
        self._times: deque[float] = deque()
        self.window = window
        self.peak = 0

    def _trim(self, now: float) -> None:
        times = self._times
        edge = now - self.window
        while times and times[0] <= edge:
            times.popleft()

    def add(self, now: float) -> int:
        """Record one event at ``now`` (monotonic seconds); return the count in the window."""
        self._trim(now)
        self._times.append(now)
        count = len(self._times)
        self.peak = max(self.peak, count)
        return count

    def count(self, now: float) -> int:
        self._trim(now)
        return len(self._times)


class RateLimiter:
    """At most ``floor(rps)`` admitted requests in any sliding second; refused ones do not count.

    Not counting refusals means a client that keeps retrying is not starved for ever: it gets
    through as soon as the admitted traffic of the last second falls below the limit.
    """

    __slots__ = ("_admitted",)

    def __init__(self) -> None:
        self._admitted = SlidingCount()

    def admit(self, now: float, rps: float) -> bool:
        if rps <= 0:
            return True
        if self._admitted.count(now) >= max(1, math.floor(rps)):
            return False
        self._admitted.add(now)
        return True
