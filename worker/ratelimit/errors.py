"""What :meth:`~worker.ratelimit.limiter.FleetLimiter.acquire` raises instead of handing out a slot."""

from __future__ import annotations

__all__ = ["RateLimitCancelled", "RateLimitWaitTooLong"]


class RateLimitWaitTooLong(Exception):  # noqa: N818 (the name is the agreed interface)
    """The next slot is further away than ``wait_max_s``; nothing was reserved.

    The arguments are plain floats so the exception pickles (Celery sends it between processes).
    """

    def __init__(self, waited: float, needed: float) -> None:
        super().__init__(waited, needed)
        self.waited = waited
        self.needed = needed

    def __str__(self) -> str:
        return (
            f"rate-limit slot is {self.needed:.3f} s away (after {self.waited:.3f} s of waiting), "
            "more than the wait bound"
        )


class RateLimitCancelled(Exception):  # noqa: N818 (named like RateLimitWaitTooLong)
    """The caller's cancel event was set before or while :meth:`FleetLimiter.acquire` waited.

    A slot reserved by the abandoned wait is not given back: it simply goes unused (giving it
    back would need a second round trip and could reorder the waiters behind it). ``waited`` is a
    plain float so the exception pickles.
    """

    def __init__(self, waited: float) -> None:
        super().__init__(waited)
        self.waited = waited

    def __str__(self) -> str:
        return f"wait for a rate-limit slot cancelled after {self.waited:.3f} s"
