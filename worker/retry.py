"""Retry policy as data: how many times, how long to wait, and for which verdicts."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for 5xx, busy answers and lost connections.

    429s are not counted here: they wait on the fleet-wide limiter and have their own, larger
    budget (``max_throttled``), because a throttle is never a failure by itself.
    """

    max_retries: int = 12
    base_s: float = 1.0
    cap_s: float = 60.0
    max_throttled: int = 50

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        return cls(
            max_retries=settings.max_retries,
            base_s=settings.retry_backoff_base_s,
            cap_s=settings.retry_backoff_max_s,
            max_throttled=settings.max_throttled_retries,
        )

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Wait before retry number ``retry`` (from 1): "equal jitter", so never zero.

        Full jitter can draw 0 s and retry at once into an outage; half the exponential step
        fixed plus half random spreads the fleet and still backs off.
        """
        step = min(self.cap_s, self.base_s * (2.0 ** (retry - 1)))
        return step / 2 + (rng or random).uniform(0, step / 2)

    def budget_s(self) -> float:
        """The least total backoff before a task gives up: an outage shorter than this fails no task."""
        return sum(min(self.cap_s, self.base_s * (2.0 ** (n - 1))) / 2 for n in range(1, self.max_retries + 1))
