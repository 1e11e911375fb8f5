"""``FleetLimiter.acquire(cancel=...)``: a job that stops does not sit out its slot's wait.

Real Redis (the session's server); the waits are real reservations and a real circuit hold.
"""

from __future__ import annotations

import pickle
import threading
import time

import pytest
import redis

from worker.ratelimit import FleetLimiter, RateLimitCancelled

KEY = "sfs:rl:0123456789abcdef0123456789abcdef:sfs-turbo.example.com:443"


def _limiter(client: redis.Redis, **params: float) -> FleetLimiter:
    settings: dict[str, float] = {"rate": 2.0, "wait_max_s": 30.0, "penalty_s": 1.0}
    settings.update(params)
    return FleetLimiter(client, key=KEY, burst=1, **settings)


def test_setting_the_event_wakes_every_reserving_thread_at_once(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client)
    cancel = threading.Event()
    reserved = threading.Barrier(11)
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()

    def waiter() -> None:
        try:
            reserved.wait()
            limiter.acquire(cancel)
            result = "went"
        except RateLimitCancelled:
            result = "cancelled"
        with lock:
            outcomes.append((result, time.monotonic()))

    # At 2/s, ten waiters hold reservations up to 4.5 s ahead (the first goes at once).
    threads = [threading.Thread(target=waiter) for _ in range(10)]
    for thread in threads:
        thread.start()
    reserved.wait()
    # Let every thread reach its sleep: the Redis call is sub-millisecond, 0.3 s is plenty, and
    # a thread still on its way is cancelled by the check before its call anyway.
    time.sleep(0.3)
    assert limiter.state()["tat_ahead_s"] > 3.0, "the ten waiters reserved their slots"
    cancelled_at = time.monotonic()
    cancel.set()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    went = [at for result, at in outcomes if result == "went"]
    stopped = [at for result, at in outcomes if result == "cancelled"]
    # Only a slot due within the first 0.3 s can have gone (the free one, and maybe none else).
    assert len(went) <= 1 and len(stopped) == 10 - len(went), outcomes
    assert max(stopped) - cancelled_at < 0.1, [round(t - cancelled_at, 3) for t in stopped]


def test_an_event_set_before_the_call_takes_no_slot(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client)
    limiter.acquire()  # the free slot: the next one is 0.5 s away
    ahead = limiter.state()["tat_ahead_s"]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RateLimitCancelled):
        limiter.acquire(cancel)
    assert limiter.state()["tat_ahead_s"] <= ahead  # nothing was reserved


def test_a_circuit_hold_is_interruptible(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client, circuit_cooldown_s=20.0, circuit_cooldown_max_s=20.0)
    for _ in range(limiter.circuit_min_calls):
        limiter.record_result(server_error=True)
    assert limiter.state()["circuit"] == "open"
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(RateLimitCancelled) as caught:
        limiter.acquire(cancel)
    assert time.monotonic() - started < 0.5  # not the 20 s cool-down
    assert 0.15 < caught.value.waited < 0.5


def test_cancelled_pickles_with_a_plain_float() -> None:
    again = pickle.loads(pickle.dumps(RateLimitCancelled(1.5)))
    assert isinstance(again, RateLimitCancelled)
    assert (again.waited, again.args) == (1.5, (1.5,))
    assert "cancelled after 1.500 s" in str(again)
