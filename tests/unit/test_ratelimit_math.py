"""The limiter's pure parts: key layout, recovery time, argument checks, and the client-side loop
(waits, reservations, batching of results) driven by scripted Redis answers instead of Redis."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis

from worker.ratelimit import FleetLimiter, RateLimitWaitTooLong, _script_source, limiter_key, recovery_time_s
from worker.settings import Settings

PROJECT = "0123456789abcdef0123456789abcdef"


# --- limiter_key ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("endpoint", "scope"),
    [
        ("https://sfs-turbo.ap-southeast-1.myhuaweicloud.com", "sfs-turbo.ap-southeast-1.myhuaweicloud.com:443"),
        ("https://SFS-Turbo.Example.com/v1/", "sfs-turbo.example.com:443"),
        ("https://sfs.example.com:8443/v1/x?y=1", "sfs.example.com:8443"),
        ("http://127.0.0.1:9000", "127.0.0.1:9000"),
        ("http://fake-api", "fake-api:80"),
        ("sfs.example.com", "sfs.example.com:443"),
        ("https://[::1]:8443", "[::1]:8443"),
    ],
)
def test_key_scope_is_host_and_port(endpoint: str, scope: str) -> None:
    assert limiter_key("sfs", PROJECT, endpoint) == f"sfs:rl:{PROJECT}:{scope}"


def test_lists_and_deletes_on_one_host_share_a_key() -> None:
    base = "https://sfs-turbo.example.com"
    assert limiter_key("sfs", PROJECT, base) == limiter_key("sfs", PROJECT, base + ":443/v1/p/sfs-turbo/x")


@pytest.mark.parametrize(
    ("prefix", "project", "endpoint"),
    [("", PROJECT, "https://h"), ("sfs", "", "https://h"), ("sfs", PROJECT, "https://"), ("s", PROJECT, "ftp://h")],
)
def test_key_refuses_what_cannot_scope(prefix: str, project: str, endpoint: str) -> None:
    with pytest.raises(ValueError):
        limiter_key(prefix, project, endpoint)


# --- Recovery curve -------------------------------------------------------------------------
def test_recovery_time_matches_the_documented_defaults() -> None:
    assert recovery_time_s(0.5, 0.05) == pytest.approx(10.0)  # half rate, +5 %/s
    assert recovery_time_s(0.5, 0.25) == pytest.approx(2.0)
    assert recovery_time_s(0.5, 0.05, from_fraction=0.1) == pytest.approx(19.0)  # near the floor
    assert recovery_time_s(1.0, 0.05) == 0.0


# --- The exception --------------------------------------------------------------------------
def test_wait_too_long_pickles_with_plain_floats() -> None:
    error = RateLimitWaitTooLong(1.25, 61.5)
    again = pickle.loads(pickle.dumps(error))
    assert (again.waited, again.needed, again.args) == (1.25, 61.5, (1.25, 61.5))
    assert "61.500 s away" in str(again)


# --- A Redis stand-in answering from a script of replies -------------------------------------
class FakeRedis:
    """Records every script call; ``answers[name]`` yields the replies in order."""

    def __init__(self, **answers: list[list[Any]]) -> None:
        self.answers: dict[str, Iterator[list[Any]]] = {k: iter(v) for k, v in answers.items()}
        self.calls: list[tuple[str, list[str]]] = []
        self.epoch = 0

    def register_script(self, source: str) -> Callable[..., list[Any]]:
        name = next(n for n in ("acquire", "throttled", "record", "state") if _script_source(n) == source)

        def run(keys: list[str], args: list[str]) -> list[Any]:
            self.calls.append((name, args))
            return next(self.answers[name])

        return run

    def hget(self, key: str, field: str) -> str:
        self.calls.append(("hget", [field]))
        return str(self.epoch)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _limiter(fake: FakeRedis, clock: FakeTime, **params: Any) -> FleetLimiter:
    settings: dict[str, Any] = {"rate": 10.0, "burst": 2, "wait_max_s": 5.0, "penalty_s": 3.0}
    settings.update(params)
    return FleetLimiter(cast(redis.Redis, fake), key="k", clock=clock.clock, sleep=clock.sleep, **settings)


def test_free_slot_is_one_call_and_no_sleep() -> None:
    fake, clock = FakeRedis(acquire=[[0, 0, 0, 0]]), FakeTime()
    assert _limiter(fake, clock).acquire() == 0.0
    assert [name for name, _ in fake.calls] == ["acquire"]
    assert clock.sleeps == []


def test_short_reservation_sleeps_once_without_recheck() -> None:
    fake, clock = FakeRedis(acquire=[[1, 20_000, 0, 0]]), FakeTime()
    assert _limiter(fake, clock).acquire() == pytest.approx(0.02)
    assert clock.sleeps == [0.02]
    assert [name for name, _ in fake.calls] == ["acquire"]


def test_long_reservation_is_voided_by_a_new_epoch() -> None:
    # Reserved 0.5 s ahead in epoch 0; meanwhile a 429 moved the epoch to 1: ask again.
    fake, clock = FakeRedis(acquire=[[1, 500_000, 0, 0], [1, 800_000, 1, 0]]), FakeTime()
    fake.epoch = 1
    waited = _limiter(fake, clock).acquire()
    assert clock.sleeps == [0.5, 0.8]
    assert waited == pytest.approx(1.3)
    assert [name for name, _ in fake.calls] == ["acquire", "hget", "acquire", "hget"]
    # The second request's budget is what is left of wait_max_s.
    assert fake.calls[2][1][2] == "4500000"


def test_too_long_raises_before_sleeping_with_time_already_waited() -> None:
    fake, clock = FakeRedis(acquire=[[3, 1_000_000, 0, 1], [2, 7_000_000, 0, 1]]), FakeTime()
    with pytest.raises(RateLimitWaitTooLong) as caught:
        _limiter(fake, clock).acquire()
    assert clock.sleeps == [1.0]  # the held circuit's wait, then no sleep for the refusal
    assert (caught.value.waited, caught.value.needed) == (1.0, 7.0)


def test_throttled_uses_retry_after_else_penalty_and_caps_it() -> None:
    fake, clock = FakeRedis(throttled=[[1, 5000]] * 4), FakeTime()
    limiter = _limiter(fake, clock, max_penalty_s=60.0)
    for retry_after in (1.5, None, 0.0, 3600.0):
        limiter.throttled(retry_after)
    pauses = [args[2] for name, args in fake.calls]
    assert pauses == ["1500000", "3000000", "3000000", "60000000"]


def test_successes_are_batched_and_errors_sent_at_once() -> None:
    fake, clock = FakeRedis(record=[[0, 0]] * 10), FakeTime()
    limiter = _limiter(fake, clock, result_flush_s=0.25)
    limiter.record_result(server_error=False)  # first result: nothing sent recently, send
    for _ in range(5):
        clock.now += 0.01
        limiter.record_result(server_error=False)
    limiter.record_result(server_error=True)  # carries the 5 pending successes with it
    clock.now += 0.3
    limiter.record_result(server_error=False)
    limiter.record_result(server_error=False)
    limiter.flush()
    sent = [(int(args[0]), int(args[1])) for _, args in fake.calls]
    assert sent == [(1, 0), (5, 1), (1, 0), (1, 0)]


def test_results_are_not_batched_while_the_circuit_is_not_closed() -> None:
    fake, clock = FakeRedis(acquire=[[0, 0, 0, 2]], record=[[2, 1], [0, 1]]), FakeTime()
    limiter = _limiter(fake, clock)
    limiter.acquire()  # learns the circuit is half-open
    limiter.record_result(server_error=False)
    limiter.record_result(server_error=False)  # 0 s later, still sent: the trial decides
    assert [name for name, _ in fake.calls] == ["acquire", "record", "record"]


@pytest.mark.parametrize(
    "params",
    [
        {"rate": 0.0},
        {"rate": float("inf")},
        {"burst": 0},
        {"burst": 2.5},
        {"wait_max_s": 0.0},
        {"throttle_cut": 1.5},
        {"min_rate_fraction": 0.0},
        {"circuit_cooldown_s": 10.0, "circuit_cooldown_max_s": 5.0},
        {"circuit_min_calls": 0},
        {"penalty_s": -1.0},
        {"start_ramp_s": -1.0},
        {"start_ramp_s": 1.0, "start_fraction": 0.0},
        {"spacing_margin": 0.5},
    ],
)
def test_bad_parameters_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _limiter(FakeRedis(), FakeTime(), **params)


def test_from_settings_uses_the_configured_scope_and_rate() -> None:
    settings = Settings(api_endpoint="https://sfs-turbo.example.com", project_id=PROJECT, rate_limit=7.5, rate_burst=3)
    limiter = FleetLimiter.from_settings(cast(redis.Redis, FakeRedis()), settings)
    assert limiter.key == f"sfs:rl:{PROJECT}:sfs-turbo.example.com:443"
    assert (limiter.rate, limiter.burst, limiter.wait_max_s, limiter.penalty_s) == (7.5, 3, 60.0, 3.0)
    with pytest.raises(ValueError):
        FleetLimiter.from_settings(cast(redis.Redis, FakeRedis()), Settings())


def test_from_settings_passes_headroom_and_ramp_to_the_script() -> None:
    settings = Settings(
        api_endpoint="https://sfs-turbo.example.com",
        project_id=PROJECT,
        rate_limit=100.0,
        rate_headroom=0.05,
        rate_ramp_s=2.0,
    )
    fake = FakeRedis(acquire=[[0, 0, 0, 0]])
    FleetLimiter.from_settings(cast(redis.Redis, fake), settings).acquire()
    ((name, args),) = fake.calls
    assert name == "acquire"
    # Slots at 95/s; after an idle spell from half of that, +23.75/s per second (full after 2 s).
    assert float(args[0]) == pytest.approx(95.0)
    assert (float(args[6]), float(args[7])) == pytest.approx((0.5, 23.75))
    off = FakeRedis(acquire=[[0, 0, 0, 0]])
    FleetLimiter.from_settings(cast(redis.Redis, off), settings.model_copy(update={"rate_ramp_s": 0.0})).acquire()
    assert float(off.calls[0][1][6]) == 0.0
