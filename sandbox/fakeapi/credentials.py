"""What the gateway sees per credential: requests, their busiest second, 429s, and the projects
asked; and the per-user throttle (the gateway counts per user, not per project).

A credential is named by its access key (not a secret) or, for a token, by a short digest of it
(``token:1a2b3c4d5e6f``), so that the stats can be printed by a test without leaking anything.
``FakeConfig.credential_rate_limit_rps`` throttles every credential at that rate, each in its
own sliding second; ``FakeConfig.credential_rates`` sets it per access key (or token label).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.fakeapi.window import RateLimiter, SlidingCount

_ACCESS = "Access="


def credential_of(headers: Mapping[str, str]) -> str:
    """The label of the request's credential: its AK, a token's digest, or ``anonymous``."""
    token = headers.get("x-auth-token")
    if token:
        return "token:" + hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]
    authorization = headers.get("authorization", "")
    start = authorization.find(_ACCESS)
    if start >= 0:
        access = authorization[start + len(_ACCESS) :].split(",", 1)[0].strip()
        if access:
            return access[:64]
    return "anonymous"


@dataclass
class CredentialStats:
    requests: int = 0
    answered_429: int = 0
    busiest: SlidingCount = field(default_factory=SlidingCount)
    # Five seconds: the rate a client kept, less sensitive to requests this fake reads in a bunch
    # after its own loop was held up (on a loaded machine it stamps them as it reads them).
    busiest_5s: SlidingCount = field(default_factory=lambda: SlidingCount(5.0))
    by_project: Counter[str] = field(default_factory=Counter)
    first: float = 0.0  # monotonic seconds of the first and the last request
    last: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        span = self.last - self.first
        return {
            "requests": self.requests,
            "answered_429": self.answered_429,
            "busiest_second": self.busiest.peak,
            "busiest_5s_rps": self.busiest_5s.peak / 5.0,
            # The steady rate: requests after the first, over the time from the first to the last.
            "average_rps": round((self.requests - 1) / span, 3) if span > 0 else None,
            "by_project": dict(self.by_project),
        }


class CredentialMeter:
    """Per-credential counts and throttles. Lives on the fake's event loop; not thread-safe."""

    def __init__(self) -> None:
        self.seen: dict[str, CredentialStats] = {}
        self._limiters: dict[str, RateLimiter] = {}

    def arrive(self, who: str, project_id: str | None, now: float) -> None:
        stats = self.seen.get(who)
        if stats is None:
            stats = self.seen[who] = CredentialStats()
        stats.requests += 1
        if stats.requests == 1:
            stats.first = now
        stats.last = now
        stats.busiest.add(now)
        stats.busiest_5s.add(now)
        if project_id:
            stats.by_project[project_id] += 1

    def admit(self, who: str, now: float, rps: float) -> bool:
        """The per-user throttle: ``False`` (answer 429) above ``rps`` in the last second."""
        if rps <= 0:
            return True
        limiter = self._limiters.get(who)
        if limiter is None:
            limiter = self._limiters[who] = RateLimiter()
        if limiter.admit(now, rps):
            return True
        self.seen[who].answered_429 += 1
        return False

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {who: stats.as_dict() for who, stats in sorted(self.seen.items())}

    def reset(self) -> None:
        self.seen.clear()
