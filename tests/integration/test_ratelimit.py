"""The fleet limiter against a real Redis, with real processes sharing one key.

Every number asserted here is what an operator would check: how many requests went out in the
busiest second, what rate the fleet achieved, how long a worker waited after a 429 or while the
circuit was open. Timestamps are taken with ``time.time()`` in each process right after
``acquire()`` returns, i.e. when the request would be sent; the fleet tests also measure how late
the kernel woke each process from the limiter's sleep (see ``_check_fleet``). The whole file
runs in about 25 s.
"""

from __future__ import annotations

import math
import multiprocessing
import pickle
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest
import redis

from worker.ratelimit import FleetLimiter, RateLimitWaitTooLong

pytestmark = pytest.mark.integration

KEY = "sfs:rl:0123456789abcdef0123456789abcdef:sfs-turbo.example.com:443"
_SPAWN = multiprocessing.get_context("spawn")


# --- Helpers that run in child processes (importable, so "spawn" can start them) ------------
def _limiter(url: str, **params: Any) -> FleetLimiter:
    defaults: dict[str, Any] = {"rate": 20.0, "burst": 5, "wait_max_s": 30.0, "penalty_s": 1.0}
    defaults.update(params)
    burst = int(defaults.pop("burst"))
    return FleetLimiter(redis.Redis.from_url(url), key=KEY, burst=burst, **defaults)


def _hammer(url: str, plan: tuple[float, int, float], barrier: Barrier, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    rate, burst, seconds = plan
    late = [0.0]

    def sleep(wanted: float) -> None:
        # How late the kernel woke us: the limiter cannot help that, so it is measured apart.
        before = time.perf_counter()
        time.sleep(wanted)
        late[0] += max(0.0, time.perf_counter() - before - wanted)

    limiter = _limiter(url, rate=rate, burst=burst, sleep=sleep)
    limiter.state()  # connect before the clock starts
    barrier.wait()
    end = time.time() + seconds
    sent: list[tuple[float, float]] = []
    for _ in range(int(rate * seconds) + burst + 1):  # bounded: no process can get more
        late[0] = 0.0
        limiter.acquire()
        now = time.time()
        if now >= end:
            break
        sent.append((now, late[0]))
    out.put(sent)


def _report_429(url: str, retry_after: float, params: dict[str, float], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    _limiter(url, **params).throttled(retry_after)
    out.put(time.time())


def _report_5xx(url: str, count: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Report ``count`` 5xx; answer (time just before the one that opened the circuit, its number)."""
    limiter = _limiter(url, circuit_cooldown_s=0.5, circuit_cooldown_max_s=4.0)
    opened: tuple[float, int] | None = None
    for n in range(1, count + 1):
        before = time.time()
        limiter.record_result(server_error=True)
        if opened is None and limiter.state()["circuit"] == "open":
            opened = (before, n)
    out.put(opened)


def _run_child(target: Callable[..., None], *args: object) -> object:
    out = _SPAWN.Queue()
    proc = _SPAWN.Process(target=target, args=(*args, out))
    proc.start()
    try:
        return out.get(timeout=30)
    finally:
        proc.join(timeout=10)
        assert proc.exitcode == 0


def _fleet(url: str, *, processes: int, rate: float, burst: int, seconds: float) -> list[tuple[float, float]]:
    """Each request's send time and how late its process woke from the limiter's sleep."""
    barrier = _SPAWN.Barrier(processes)
    out = _SPAWN.Queue()
    procs = [_SPAWN.Process(target=_hammer, args=(url, (rate, burst, seconds), barrier, out)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    try:
        per_process = [out.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
    assert all(proc.exitcode == 0 for proc in procs)
    assert all(per_process), "every process got slots"
    return sorted(item for sent in per_process for item in sent)


def busiest_window(stamps: list[float], width: float = 1.0) -> int:
    """Most timestamps in any half-open window [t, t + width) (the maximum starts at a stamp)."""
    stamps = sorted(stamps)
    return max(bisect_left(stamps, t + width) - i for i, t in enumerate(stamps))


def _check_fleet(sent: list[tuple[float, float]], rate: float, burst: int) -> None:
    """The bounds an operator checks: no second above rate + burst, and the rate achieved.

    Two views of the same requests. ``due``: when each process was entitled to send, i.e. its
    send time minus how late the kernel woke it from the limiter's sleep; the limiter must hold
    rate + burst there exactly. ``sent``: the raw send times, where a process woken d seconds
    late can push up to d x rate more requests into one second (on an idle machine d is well
    under a millisecond, so both views agree; on a loaded two-CPU box it reaches milliseconds).
    """
    stamps = [t for t, _ in sent]
    due = [t - late for t, late in sent]
    worst_late = max(late for _, late in sent)
    busiest_sent, busiest_due = busiest_window(stamps), busiest_window(due)
    # After the initial burst the GCRA allows exactly one request per interval, so the steady
    # rate is measured without the burst: (n - burst) requests over the span.
    achieved = (len(stamps) - burst) / (stamps[-1] - stamps[0])
    print(
        f"\n  {len(stamps)} requests; busiest second {busiest_sent} sent, {busiest_due} due "
        f"(bound {rate + burst:g}); latest wake-up {worst_late * 1000:.2f} ms; "
        f"achieved {achieved:.2f}/s = {achieved / rate:.3f} x rate"
    )
    assert busiest_due <= rate + burst
    assert busiest_sent <= rate + burst + math.floor(worst_late * rate)
    assert achieved >= 0.95 * rate
    assert achieved <= 1.02 * rate


# --- (a), (b) Many processes, one budget ----------------------------------------------------
def test_six_processes_share_20_per_second(redis_url: str) -> None:
    _check_fleet(_fleet(redis_url, processes=6, rate=20.0, burst=5, seconds=3.0), rate=20.0, burst=5)


def test_four_processes_share_500_per_second(redis_url: str) -> None:
    _check_fleet(_fleet(redis_url, processes=4, rate=500.0, burst=10, seconds=2.0), rate=500.0, burst=10)


def test_fractional_rate_spaces_requests_exactly(redis_client: redis.Redis) -> None:
    limiter = FleetLimiter(redis_client, key=KEY, rate=0.5, burst=1, wait_max_s=5.0, penalty_s=1.0)
    limiter.acquire()
    first = time.monotonic()
    limiter.acquire()
    gap = time.monotonic() - first
    print(f"\n  0.5/s: second request {gap:.4f} s after the first")
    assert 1.99 < gap < 2.05


# --- (c) The wait bound ---------------------------------------------------------------------
def test_wait_beyond_bound_raises_before_sleeping(redis_url: str) -> None:
    sleeps: list[tuple[float, float]] = []  # (when, how long)

    def sleep(seconds: float) -> None:
        sleeps.append((time.monotonic(), seconds))
        time.sleep(seconds)

    impatient = FleetLimiter(
        redis.Redis.from_url(redis_url), key=KEY, rate=1.0, burst=1, wait_max_s=0.5, penalty_s=1.0, sleep=sleep
    )
    impatient.acquire()
    # The first slot is free: no sleep (its wall time also holds connecting and loading the
    # script, which a loaded machine stretches past any fixed bound).
    assert sleeps == []
    started = time.monotonic()
    with pytest.raises(RateLimitWaitTooLong) as caught:
        impatient.acquire()
    refused_at = time.monotonic()
    elapsed = refused_at - started
    print(f"\n  raised after {elapsed * 1000:.1f} ms, needed {caught.value.needed:.3f} s")
    assert elapsed < 0.05
    assert sleeps == []
    assert 0.9 < caught.value.needed <= 1.0
    again = pickle.loads(pickle.dumps(caught.value))
    assert (again.waited, again.needed) == (caught.value.waited, caught.value.needed)
    assert "more than the wait bound" in str(again)

    # Nothing was reserved by the refusal: a patient caller gets that same slot, in one sleep.
    patient = FleetLimiter(
        redis.Redis.from_url(redis_url), key=KEY, rate=1.0, burst=1, wait_max_s=2.0, penalty_s=1.0, sleep=sleep
    )
    waited = patient.acquire()
    print(f"  patient caller waited {waited:.3f} s in {len(sleeps)} sleep(s)")
    assert len(sleeps) == 1
    assert 0.85 < waited < 1.05
    # The one sleep ends exactly where the refused caller was told its slot was.
    (slept_from, slept), slot = sleeps[0], refused_at + caught.value.needed
    print(f"  its sleep ended {(slept_from + slept - slot) * 1000:+.1f} ms from the slot named in the refusal")
    assert abs(slept_from + slept - slot) < 0.01


# --- (d) A 429 slows the whole fleet, then the rate recovers ---------------------------------
def test_429_in_one_process_pauses_and_slows_the_others(redis_url: str) -> None:
    rate = 40.0
    params = {"rate": rate, "burst": 1, "recovery_per_s": 0.25, "throttle_cut": 0.5}
    limiter = _limiter(redis_url, **params)
    assert limiter.recovery_s == pytest.approx(2.0)
    limiter.acquire()

    reported_at = _run_child(_report_429, redis_url, 1.0, params)
    assert isinstance(reported_at, float)
    limiter.acquire()
    resumed = time.time()
    print(f"\n  next acquire went {resumed - reported_at:.3f} s after the 429 (Retry-After 1.0)")
    assert resumed - reported_at >= 0.98
    assert limiter.state()["effective_rate"] == pytest.approx(rate / 2, rel=0.02)

    # Run flat out through the documented recovery time and one second beyond it.
    stamps: list[float] = []
    rates: list[float] = []
    for _ in range(400):  # bounded; the time limit below ends the loop first
        limiter.acquire()
        now = time.time()
        if now - resumed >= limiter.recovery_s + 1.0:
            break
        stamps.append(now)
        if len(stamps) % 10 == 0:
            rates.append(limiter.state()["effective_rate"])

    def count(a: float, b: float) -> int:
        return sum(1 for t in stamps if resumed + a <= t < resumed + b)

    first, second, after = count(0, 1), count(1, 2), count(2, 3)
    final = limiter.state()
    print(
        f"  requests per second after the pause: {first}, {second}, then {after} "
        f"(expected about 25, 34, 36); effective rate {final['effective_rate']:g}"
    )
    # Linear recovery from 20 at +10/s, up to the ceiling the 429 left (0.9 x 40 = 36, rising
    # by 0.05 % of the rate per second): about 25 in the first second, 34 in the second.
    assert 22 <= first <= 27
    assert 31 <= second <= 37
    assert after >= 0.85 * rate  # one process, also polling state(): allow for its own lag
    assert final["ceiling_rate"] == pytest.approx(0.9 * rate, rel=0.01)
    assert final["effective_rate"] == final["ceiling_rate"]
    assert rates == sorted(rates), "the rate climbs steadily"
    assert final["throttled_count"] == 1


def test_429s_lower_a_ceiling_that_climbs_back(redis_client: redis.Redis) -> None:
    rate = 40.0
    limiter = FleetLimiter(
        redis_client,
        key=KEY,
        rate=rate,
        burst=1,
        wait_max_s=5.0,
        penalty_s=0.0,
        throttle_guard_s=0.0,
        ceiling_climb_per_s=0.1,
    )
    limiter.throttled(None)  # drawn at the full 40/s: ceiling 36, climbing 4/s per second
    first = limiter.state()
    limiter.throttled(None)  # at once again, drawn at 20/s (the cut rate): ceiling 18
    second = limiter.state()
    print(f"\n  ceilings after two 429s: {first['ceiling_rate']:g}, then {second['ceiling_rate']:g}")
    assert first["ceiling_rate"] == pytest.approx(36.0, abs=0.1)
    assert second["ceiling_rate"] == pytest.approx(18.0, abs=0.1)
    time.sleep(1.0)
    climbed = limiter.state()["ceiling_rate"]
    print(f"  one second later: {climbed:.2f}")
    assert 21.5 < climbed < 23.0
    # With no ceiling left below it (none set), the state reports the configured rate.
    fresh = FleetLimiter(redis_client, key=KEY + ":other", rate=rate, burst=1, wait_max_s=5.0, penalty_s=0.0)
    assert fresh.state()["ceiling_rate"] == rate


def test_many_429s_at_once_cut_the_rate_once(redis_client: redis.Redis) -> None:
    limiter = FleetLimiter(redis_client, key=KEY, rate=20.0, burst=5, wait_max_s=5.0, penalty_s=0.5)
    for _ in range(16):  # every request in flight comes back 429
        limiter.throttled(None)
    state = limiter.state()
    assert state["throttled_count"] == 16
    assert state["rate_cuts"] == 1
    assert state["effective_rate"] == pytest.approx(10.0)
    assert 0.4 < state["penalty_remaining_s"] <= 0.5  # no Retry-After: the configured penalty


def test_429_voids_a_sleeping_reservation(redis_url: str) -> None:
    limiter = _limiter(redis_url, rate=2.0, burst=1)
    limiter.acquire()
    went: list[float] = []
    started = time.time()
    sleeper = threading.Thread(target=lambda: went.append(limiter.acquire()))
    sleeper.start()  # reserves the slot 0.5 s ahead and sleeps
    time.sleep(0.1)
    _limiter(redis_url, rate=2.0, burst=1).throttled(1.0)
    sleeper.join(timeout=5)
    print(f"\n  the reserved request went {time.time() - started:.3f} s after reserving (slot was 0.5 s)")
    assert went and went[0] >= 1.05  # the pause (0.1 + 1.0 s), not the reserved 0.5 s


# --- Slow start after an idle spell ---------------------------------------------------------
def _flat_out(limiter: FleetLimiter, seconds: float) -> list[float]:
    """Send times of one caller taking every slot it can for ``seconds``."""
    stamps: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        limiter.acquire()
        stamps.append(time.monotonic())
    return stamps


def _per_second(stamps: list[float]) -> list[int]:
    start = stamps[0]
    counts = [0] * (int(stamps[-1] - start) + 1)
    for t in stamps:
        counts[int(t - start)] += 1
    return counts


def test_idle_limiter_starts_at_half_rate_and_climbs_back(redis_client: redis.Redis) -> None:
    rate = 100.0
    limiter = FleetLimiter(
        redis_client, key=KEY, rate=rate, burst=1, wait_max_s=5.0, penalty_s=1.0, start_ramp_s=1.0, idle_s=0.5
    )
    counts = _per_second(_flat_out(limiter, 2.5))
    print(f"\n  fresh limiter, 100/s with a 1 s ramp from 50/s: {counts[:2]} requests in its first two seconds")
    # Linear 50 -> 100 over the first second: about 75 in it, then the full rate.
    assert 70 <= counts[0] <= 78
    assert counts[1] >= 97
    assert limiter.state()["effective_rate"] == rate

    # Flat out, the fleet never counts as idle: a second stretch right after runs at full rate.
    again = _per_second(_flat_out(limiter, 1.2))
    print(f"  saturated, continued: {again[0]} in the next second")
    assert again[0] >= 97

    # After an idle spell the ramp starts over.
    time.sleep(0.7)
    after_idle = _per_second(_flat_out(limiter, 1.2))
    print(f"  after 0.7 s idle: {after_idle[0]} in the first second")
    assert 70 <= after_idle[0] <= 78


def test_slow_start_never_raises_a_rate_already_cut_by_a_429(redis_client: redis.Redis) -> None:
    limiter = FleetLimiter(
        redis_client,
        key=KEY,
        rate=40.0,
        burst=1,
        wait_max_s=5.0,
        penalty_s=0.0,
        throttle_cut=0.25,
        recovery_per_s=0.01,
        start_ramp_s=1.0,
        idle_s=0.2,
    )
    limiter.throttled(None)  # cut to 10/s (a quarter), recovering slowly
    time.sleep(0.3)  # idle long enough for a slow start, which would be at 20/s
    stamps = _flat_out(limiter, 1.0)
    print(f"\n  after a 429 cut to 10/s and an idle spell: {len(stamps)} requests in 1 s")
    # 10/s and the first, free slot (a slow start from 20/s would have sent about 25).
    assert len(stamps) <= 13
    assert limiter.state()["effective_rate"] < 11


def test_ramp_off_means_full_rate_from_the_first_request(redis_client: redis.Redis) -> None:
    limiter = FleetLimiter(redis_client, key=KEY, rate=100.0, burst=1, wait_max_s=5.0, penalty_s=1.0)
    counts = _per_second(_flat_out(limiter, 1.1))
    assert counts[0] >= 97


# --- (e) The circuit -------------------------------------------------------------------------
def test_circuit_opens_on_5xx_and_closes_after_a_sample(redis_url: str) -> None:
    limiter = _limiter(redis_url, rate=100.0, burst=10, circuit_cooldown_s=0.5, circuit_cooldown_max_s=4.0)
    # Below the thresholds nothing happens: 15 successes (batched) then 10 errors is 40 %.
    for _ in range(15):
        limiter.record_result(server_error=False)
    for _ in range(10):
        limiter.record_result(server_error=True)
    assert limiter.state()["circuit"] == "closed"
    assert (limiter.state()["window_ok"], limiter.state()["window_errors"]) == (15, 10)

    opened = _run_child(_report_5xx, redis_url, 60)
    assert isinstance(opened, tuple)
    # 15 successes + 60 errors in the window reach 80 %: the 50th error from the other process.
    opened_at, opened_by = opened
    assert opened_by == 50
    state = limiter.state()
    assert (state["circuit"], state["opened_count"]) == ("open", 1)

    limiter.acquire()
    trial_at = time.time()
    print(f"\n  first request went {trial_at - opened_at:.3f} s after the circuit opened (cool-down 0.5 s)")
    assert trial_at - opened_at >= 0.5
    assert limiter.state()["circuit"] == "half-open"
    waited = limiter.acquire()  # half the rate (50/s), and no burst
    print(f"  second sample request waited {waited:.3f} s (half-open spacing 0.02 s)")
    assert 0.015 <= waited <= 0.03

    # An all-error sample re-opens as soon as the full sample (10) cannot get under 80 %: at the
    # 8th error, with the cool-down doubled (an outage).
    for n in range(1, 9):
        limiter.record_result(server_error=True)
        assert limiter.state()["circuit"] == ("open" if n == 8 else "half-open"), n
    state = limiter.state()
    assert (state["circuit"], state["opened_count"], state["open_streak"]) == ("open", 2, 1)
    assert 0.9 < state["circuit_remaining_s"] <= 1.0

    waited = limiter.acquire()
    assert 0.9 < waited <= 1.05
    # A brownout's sample (half errors) closes it: the decision waits for the 10th result.
    for n in range(1, 11):
        limiter.record_result(server_error=n % 2 == 0)
        assert limiter.state()["circuit"] == ("closed" if n == 10 else "half-open"), n
    assert limiter.acquire() < 0.01

    # Opening again soon after closing doubles again; acquire honours its wait bound.
    reopened = _run_child(_report_5xx, redis_url, 20)
    assert isinstance(reopened, tuple)
    reopened_at, reopened_by = reopened
    assert reopened_by == 20  # closing cleared the window: it takes circuit_min_calls again
    remaining = limiter.state()["circuit_remaining_s"]
    assert 1.99 < remaining + (time.time() - reopened_at) <= 2.1
    impatient = _limiter(redis_url, wait_max_s=0.5)
    started = time.monotonic()
    with pytest.raises(RateLimitWaitTooLong) as caught:
        impatient.acquire()
    assert time.monotonic() - started < 0.05
    assert 1.5 < caught.value.needed <= 2.0


# --- (f) Scripts and state gone -------------------------------------------------------------
def test_script_flush_and_lost_state_are_survived(redis_client: redis.Redis) -> None:
    limiter = FleetLimiter(redis_client, key=KEY, rate=50.0, burst=2, wait_max_s=5.0, penalty_s=0.2)
    limiter.acquire()
    redis_client.script_flush()
    assert limiter.acquire() < 0.01
    redis_client.script_flush()
    limiter.throttled(None)
    redis_client.script_flush()
    limiter.record_result(server_error=True)
    redis_client.script_flush()
    assert limiter.state()["throttled_count"] == 1
    redis_client.flushdb()  # as after a Redis restart without persistence
    assert limiter.state()["throttled_count"] == 0
    assert limiter.acquire() < 0.01
    assert 3600 < redis_client.ttl(KEY) <= 86400  # the state does not outlive a day of silence
