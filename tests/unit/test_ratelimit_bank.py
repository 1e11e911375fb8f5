"""The limiter's bank (slots reserved several at a time) never costs the fleet slots at burst 1.

Real Redis (the session's server). At burst 1 the GCRA allows no lateness, so a banked slot that
no thread of its process claims at its very time is lost to everyone: there the limiter reserves
one slot per request. With a burst, banked slots may be used a little late and the bank stays.
"""

from __future__ import annotations

import time

import redis

from worker.ratelimit import FleetLimiter

KEY = "sfs:rl:0123456789abcdef0123456789abcdef:bank.example.com:443"
RATE = 50.0


def _limiter(client: redis.Redis, burst: int) -> FleetLimiter:
    client.delete(KEY)
    return FleetLimiter(client, key=KEY, rate=RATE, burst=burst, wait_max_s=5.0, penalty_s=1.0, bank_slots=8)


def test_at_burst_1_a_request_reserves_only_its_own_slot(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, burst=1)
    for _ in range(4):
        limiter.acquire()
        # The next slot is at most one interval away: nothing was reserved for a later caller.
        assert limiter.state()["tat_ahead_s"] <= 1 / RATE + 0.005


def test_at_burst_1_a_caller_arriving_late_loses_the_fleet_no_slot(redis_client: redis.Redis) -> None:
    """Two processes share the rate; one of them is busy (sends every 45 ms): the other still
    gets the rest of the rate, because the busy one holds no slots it cannot use."""
    busy = _limiter(redis_client, burst=1)
    other = FleetLimiter(redis_client, key=KEY, rate=RATE, burst=1, wait_max_s=5.0, penalty_s=1.0, bank_slots=8)
    start = time.monotonic()
    sent = 0
    next_busy = start
    while time.monotonic() - start < 1.0:
        if time.monotonic() >= next_busy:
            busy.acquire()
            sent += 1
            next_busy = time.monotonic() + 0.045
        else:
            other.acquire()
            sent += 1
    elapsed = time.monotonic() - start
    # Every slot of the second was used by one of the two (the first goes at once).
    assert sent >= RATE * elapsed * 0.9  # with a bank at burst 1: about 0.8


def test_with_a_burst_slots_are_still_banked(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, burst=2)
    limiter.acquire()
    limiter.acquire()
    # The second call asked for more than one slot: the next free slot is further than one interval.
    assert limiter.state()["tat_ahead_s"] > 1 / RATE
