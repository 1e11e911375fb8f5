"""The circuit's edges against a real Redis: what a brownout does to it, and how a sample decides.

The outage path (all errors: open, a short sample, re-open with the cool-down doubled) is in
``test_ratelimit.py``; this file is about the failures that are *not* an outage.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from worker.ratelimit import FleetLimiter

pytestmark = pytest.mark.integration

KEY = "sfs:rl:0123456789abcdef0123456789abcdef:sfs-turbo.example.com:443"


def _limiter(client: redis.Redis, **params: Any) -> FleetLimiter:
    settings: dict[str, Any] = {"rate": 100.0, "burst": 10, "wait_max_s": 10.0, "penalty_s": 1.0}
    settings.update(params)
    return FleetLimiter(client, key=KEY, **settings)


def _open(limiter: FleetLimiter) -> None:
    for _ in range(limiter.circuit_min_calls):
        limiter.record_result(server_error=True)
    assert limiter.state()["circuit"] == "open"


def test_a_50_percent_brownout_does_not_open_the_circuit(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client)
    for n in range(400):
        limiter.record_result(server_error=n % 2 == 0)
    limiter.flush()
    state = limiter.state()
    assert (state["circuit"], state["opened_count"]) == ("closed", 0)
    assert state["window_errors"] == 200


def test_a_sample_over_the_ratio_but_not_an_outage_reopens_without_doubling(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, circuit_cooldown_s=0.3, circuit_cooldown_max_s=4.0)
    _open(limiter)
    limiter.acquire()  # waits out the cool-down: half-open
    limiter.record_result(server_error=False)
    limiter.record_result(server_error=False)
    assert limiter.state()["circuit"] == "half-open"  # one success no longer decides
    for _ in range(8):  # 8 of 10 errors: over 80 %, but not an outage
        limiter.record_result(server_error=True)
    state = limiter.state()
    assert (state["circuit"], state["opened_count"], state["open_streak"]) == ("open", 2, 0)
    assert 0.2 < state["circuit_remaining_s"] <= 0.3  # the same cool-down, not doubled


def test_a_slow_sample_decides_when_its_time_is_up(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, circuit_cooldown_s=0.2, half_open_sample_s=0.3)
    _open(limiter)
    limiter.acquire()
    limiter.record_result(server_error=True)
    limiter.record_result(server_error=False)
    state = limiter.state()
    assert (state["circuit"], state["sample_ok"], state["sample_errors"]) == ("half-open", 1, 1)
    time.sleep(0.35)  # let the sample's time run out (the decision is the next result's)
    limiter.record_result(server_error=False)  # 1 error in 3: under the ratio
    assert limiter.state()["circuit"] == "closed"


def test_half_open_admits_a_fraction_of_the_rate_not_one_trial(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, rate=40.0, circuit_cooldown_s=0.2, half_open_fraction=0.5)
    _open(limiter)
    limiter.acquire()
    waits = [limiter.acquire() for _ in range(5)]
    # 20/s, no burst: each waits one interval (0.05 s), not a trial spacing of a second.
    assert all(0.04 <= w <= 0.07 for w in waits), waits
    assert limiter.state()["circuit"] == "half-open"


class _Asked(Exception):
    """Stops an acquire at its first wait: the test looks at what Redis answered."""


def test_a_reservation_is_not_taken_beyond_the_half_open_horizon(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, rate=10.0, circuit_cooldown_s=0.2, half_open_horizon_s=0.5)
    _open(limiter)
    limiter.acquire()
    waits: list[float] = []

    def first_wait(seconds: float) -> None:
        waits.append(seconds)
        raise _Asked

    callers = _limiter(redis_client, rate=10.0, half_open_horizon_s=0.5, sleep=first_wait)
    for _ in range(6):
        with pytest.raises(_Asked):
            callers.acquire()
    # At 5/s half-open each slot is 0.2 s further back: the first two reserve theirs (0.2, 0.4 s
    # ahead); the rest would be 0.6 s and more, past the horizon, so they are held for it and
    # reserve nothing: the queue stays within the horizon.
    assert waits[:2] == pytest.approx([0.2, 0.4], abs=0.02), waits
    assert waits[2:] == pytest.approx([0.5] * 4, abs=0.001), waits
    assert limiter.state()["tat_ahead_s"] <= 0.6
