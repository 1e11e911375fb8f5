"""One rate limiter for the whole fleet: every worker process on every host shares it in Redis.

The API gateway throttles per user (429 ``APIGW.0308``), whatever the number of workers, so the
budget has to live in one place. Celery's own ``rate_limit`` is a token bucket in each worker's
memory: N workers send N times the rate.

**Algorithm.** GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp) in a
Lua script, run atomically by Redis. With interval ``T = 1/rate`` and tolerance
``tau = (burst - 1) * T``, the script keeps ``tat``, the theoretical arrival time of the next
request; a request may go at ``max(tat, now) - tau``, and taking a slot moves ``tat`` on by
``T``. Any window of length ``L`` then holds at most ``burst + ceil(L / T) - 1`` requests, and
a saturated fleet gets exactly ``rate``. Times are microseconds of the Redis server's clock
(``TIME``), read inside the script: worker hosts whose clocks disagree still share one timeline.
When the slot is in the future the script *reserves* it and answers the wait: the caller sleeps
exactly that long, once, and goes. Answering "come back later" instead would wake every waiter
for every slot (N round trips per slot, slots lost to late wake-ups, and an unlucky process
could lose every race until its wait bound runs out). A wait that would exceed ``wait_max_s``
reserves nothing and raises :class:`RateLimitWaitTooLong` before sleeping.

**Keys.** One Redis hash per quota scope, ``{prefix}:rl:{project_id}:{host}:{port}``
(:func:`limiter_key`): lists, shows and deletes of one project on one API host share a budget.
Everything (GCRA state, throttle state, circuit and its 5xx window) is in that one hash, so each
script touches one key (atomic, and a single slot should the Redis ever be a cluster). Fields:
``tat`` (us), ``ep`` (epoch: bumped to void reservations), ``r0``/``rt``/``rs`` (rate after the
last 429 or idle spell, when its climb starts, and the climb's slope), ``pu`` (pause until),
``ng`` (no rate cut before), ``tn``/``tc`` (429 reports, rate cuts), ``cs``/``cu`` (circuit
state, open until), ``hs``/``ho``/``he`` (half-open sample: start, successes, server errors),
``cn``/``ck``/``cc`` (openings,
consecutive-opening streak, last close), ``w0..w9`` (the 5xx window ring). The hash expires
after ``key_ttl_s`` (default a day) without writes.

**429 and the recovery curve.** :meth:`FleetLimiter.throttled` pauses the whole fleet until
``now + (Retry-After or penalty_s)`` (the burst allowance is spent, so the fleet resumes one
request per interval), cuts the effective rate to ``max(floor, rate_now * throttle_cut)``, and
voids every outstanding reservation (sleepers check the epoch when they wake). After the pause
the rate climbs linearly, ``recovery_per_s * rate`` per second, back to the configured rate:
with the defaults (cut to 1/2, +5 % of the rate per second) full speed returns 10 s after the
pause; from the floor (5 %) it takes 19 s. That is AIMD, as in TCP: halve on a signal, add
slowly. The 429s of requests already in flight cut the rate only once: one cut per
``max(pause, throttle_guard_s)``, later ones only extend the pause. Each cut also leaves a
*ceiling* at ``ceiling_cut`` (0.9) of the rate that drew the 429 (fields ``cl``/``ct``), which
rises by ``ceiling_climb_per_s * rate`` per second (0.05 % of the rate: 200 s from 0.9 back to
full): a limit set above the gateway's would otherwise climb back into a 429 every ten seconds
(the rate benchmark, 20 % over: six 429s and 0.55 x the gateway's rate without it), and a
gateway that allows more again is found again.

**Slow start and headroom.** A request that reaches the gateway a little late, next to on-time
ones, puts ``rate + 1`` requests into one of the gateway's sliding seconds: a 429 at a limit
equal to the gateway's. Two defences. Slots are spaced ``spacing_margin`` (the service's
``SFS_CLEANUP_RATE_HEADROOM``, 2 %) wider than ``1/rate``, which absorbs about 20 ms of lateness
at any rate. And the first requests after an idle spell (no slot taken for ``idle_s``), which
are the late ones (new connections and TLS handshakes, processes and threads starting their
first job), go at ``start_fraction`` (1/2) of the rate, climbing back to it over ``start_ramp_s``
(the service's ``SFS_CLEANUP_RATE_RAMP_S``, 2 s): the rate benchmark saw one 429 in the first
second of most runs with four workers without it, and none with it. It costs a run about
``start_ramp_s / 4`` seconds at the full rate, once.

**Circuit.** It is for outages, not for brownouts. :meth:`FleetLimiter.record_result` feeds a
window of the last ``circuit_window_s`` (10) seconds. With at least ``circuit_min_calls`` (20)
results and at least ``circuit_error_ratio`` (80 %) of them server errors the circuit OPENS:
every ``acquire`` waits out a cool-down of ``circuit_cooldown_s`` (5 s). Then it is HALF-OPEN:
requests go at ``half_open_fraction`` (1/2) of the rate, without the burst, and their results
are a *sample*: once it holds ``half_open_min_calls`` (10) results, or has run
``half_open_sample_s`` (5 s) with at least one, the circuit CLOSES if the sample's error ratio is
under ``circuit_error_ratio`` and re-opens otherwise (at once, if so many errors came in that
the full sample cannot get under it: an outage costs 8 requests per cool-down). The cool-down
doubles (up to ``circuit_cooldown_max_s``, 60 s) only for what looks like an outage, a sample or
window with at least ``circuit_outage_ratio`` (95 %) errors, when it re-opens from half-open or
within that maximum of the last close. Why 80 %, and a sample rather than one trial: an outage
is (nearly) all errors, while in a brownout (half of the DELETEs answering 500, or every task's
first attempt failing and its retry succeeding) retries already deliver; a 50 % threshold opened
on such brownouts, and a single half-open trial then met one of the many failures, re-opened
with a doubled cool-down and all but stopped the run (measured: under 100 deletions in 10
minutes at a 50 % brownout where 25/s was possible). At 80 %, a 50 % brownout over 20 results
opens the circuit with a chance of about 0.6 % per check (and far less over a full window), and
when it does the sample closes it again after a few seconds at half the rate. Opening voids
reservations like a 429 does and restarts the queue at the end of the cool-down; half-open
reservations go at most ``half_open_horizon_s`` (1 s) ahead (further waiters are held and ask
again), so that the fleet is back at full rate within that time of the close. Results arriving
while it is open are ignored (they describe requests sent before). Successes are sent in small
batches (every ``result_flush_s``, 0.25 s) while the circuit is closed; a server error, and any
result while the circuit is not closed, is sent at once, together with the successes pending
before it.

**Cost.** ``acquire`` is one ``EVALSHA`` when a slot is free. A reservation longer than
``recheck_after_s`` adds one ``HGET`` of the epoch after the sleep: a shorter one is treated
like a request already in flight, which a 429 cannot recall either.

**Why our own Lua and not a library.** Measurably exact (the integration tests hold 20/s and
500/s across processes to the rate plus the burst in every sliding second); the server's clock
(``limits`` and ``pyrate-limiter`` read the client's); one round trip that answers the wait,
which is what sleep-until-slot needs (``limits`` has no wait, dramatiq's limiters raise); and
the 429 penalty, the recovery curve and the circuit have to live atomically in the same state,
which no library offers. Scripts are registered with redis-py's ``register_script``, whose
``EVALSHA`` falls back to loading the script on ``NOSCRIPT``: a Redis restart or a ``SCRIPT
FLUSH`` is survived (the limiter's state starts over, as after an idle day).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from enum import IntEnum
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import redis

if TYPE_CHECKING:
    from redis.commands.core import Script

    from worker.settings import Settings

__all__ = [
    "CircuitState",
    "FleetLimiter",
    "RateLimitCancelled",
    "RateLimitWaitTooLong",
    "limiter_key",
    "recovery_time_s",
]

_US: Final = 1_000_000
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}

# Answers of acquire.lua (see the script's header).
_GO: Final = 0
_RESERVED: Final = 1
_TOO_LONG: Final = 2
_HELD: Final = 3


class CircuitState(IntEnum):
    """The circuit as stored in Redis (``cs``)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


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


def limiter_key(prefix: str, project_id: str, endpoint: str) -> str:
    """The limiter's Redis key: ``{prefix}:rl:{project_id}:{host}:{port}``.

    The scope is the endpoint's host and port (the gateway's quota scope); path, scheme case and
    a default port do not split a budget. An endpoint without a scheme is taken as https.
    """
    if not prefix or not project_id:
        raise ValueError("prefix and project_id must not be empty")
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    host = parts.hostname
    if not host:
        raise ValueError(f"endpoint {endpoint!r} has no host")
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    if port is None:
        raise ValueError(f"endpoint {endpoint!r}: no port and unknown scheme {parts.scheme!r}")
    if ":" in host:
        host = f"[{host}]"
    return f"{prefix}:rl:{project_id}:{host}:{port}"


def recovery_time_s(throttle_cut: float, recovery_per_s: float, *, from_fraction: float = 1.0) -> float:
    """Seconds after a 429's pause until the rate is back at the configured one.

    ``from_fraction`` is the effective rate (as a fraction of the configured one) when the 429
    arrived; the pause itself is not included.
    """
    return max(0.0, 1.0 - from_fraction * throttle_cut) / recovery_per_s


@cache
def _script_source(name: str) -> str:
    package = resources.files("worker.lua")
    common = (package / "common.lua").read_text(encoding="utf-8")
    return common + "\n" + (package / f"{name}.lua").read_text(encoding="utf-8")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, not {value!r}")


def _fractions(**values: float) -> None:
    for name, value in values.items():
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], not {value!r}")


def _counts(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, not {value!r}")


class FleetLimiter:
    """A GCRA limiter, 429 back-off and 5xx circuit shared through one Redis hash.

    Thread-safe: one instance may serve every thread of a process. See the module docstring for
    the algorithm and the defaults' effects.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        key: str,
        rate: float,
        burst: int,
        wait_max_s: float,
        penalty_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        throttle_cut: float = 0.5,
        min_rate_fraction: float = 0.05,
        recovery_per_s: float = 0.05,
        throttle_guard_s: float = 1.0,
        max_penalty_s: float = 300.0,
        circuit_window_s: int = 10,
        circuit_min_calls: int = 20,
        circuit_error_ratio: float = 0.8,
        circuit_outage_ratio: float = 0.95,
        circuit_cooldown_s: float = 5.0,
        circuit_cooldown_max_s: float = 60.0,
        half_open_fraction: float = 0.5,
        half_open_min_calls: int = 10,
        half_open_sample_s: float = 5.0,
        half_open_horizon_s: float = 1.0,
        recheck_after_s: float = 0.05,
        result_flush_s: float = 0.25,
        key_ttl_s: float = 86400.0,
        spacing_margin: float = 0.0,
        start_ramp_s: float = 0.0,
        start_fraction: float = 0.5,
        idle_s: float = 1.0,
        ceiling_cut: float = 0.9,
        ceiling_climb_per_s: float = 0.0005,
    ) -> None:
        for name, value in [
            ("rate", rate),
            ("wait_max_s", wait_max_s),
            ("recovery_per_s", recovery_per_s),
            ("circuit_cooldown_s", circuit_cooldown_s),
            ("half_open_sample_s", half_open_sample_s),
            ("half_open_horizon_s", half_open_horizon_s),
            ("key_ttl_s", key_ttl_s),
            ("ceiling_climb_per_s", ceiling_climb_per_s),
            ("idle_s", idle_s),
        ]:
            _positive(name, value)
        _fractions(
            throttle_cut=throttle_cut,
            min_rate_fraction=min_rate_fraction,
            circuit_error_ratio=circuit_error_ratio,
            circuit_outage_ratio=circuit_outage_ratio,
            half_open_fraction=half_open_fraction,
            ceiling_cut=ceiling_cut,
            start_fraction=start_fraction,
        )
        _counts(
            burst=burst,
            circuit_window_s=circuit_window_s,
            circuit_min_calls=circuit_min_calls,
            half_open_min_calls=half_open_min_calls,
        )
        if min(penalty_s, throttle_guard_s, max_penalty_s, recheck_after_s, result_flush_s, start_ramp_s) < 0:
            raise ValueError("penalty, guard, recheck, flush and ramp times must not be negative")
        if circuit_cooldown_max_s < circuit_cooldown_s:
            raise ValueError("circuit_cooldown_max_s must be at least circuit_cooldown_s")
        if not key or not 0 <= spacing_margin < 0.5:
            raise ValueError("key must not be empty and spacing_margin must be in [0, 0.5)")

        self.key = key
        self.rate = float(rate)
        # Slots are spaced slightly wider than 1/rate when spacing_margin > 0 (the service uses
        # 2%): a gateway counts arrivals in a sliding second, and a request that leaves a few ms
        # late next to on-time ones would otherwise make rate + 1 arrivals in some second. 2%
        # tolerates 20 ms of lateness at any rate and keeps 0.98 of it (the rate benchmark saw
        # 429s at equal limits without it).
        self._paced_rate = self.rate * (1 - spacing_margin)
        self.burst = burst
        # Slow start after an idle spell (see acquire.lua): off when start_ramp_s is 0.
        self.start_ramp_s = start_ramp_s
        self.start_fraction = start_fraction if start_ramp_s > 0 else 0.0
        self._start_slope = self._paced_rate * (1 - start_fraction) / start_ramp_s if start_ramp_s > 0 else 0.0
        # A spell is idle when no slot was taken for idle_s, or for two intervals at low rates.
        self.idle_s = max(idle_s, 2 / self._paced_rate)
        self.wait_max_s = float(wait_max_s)
        self.penalty_s = float(penalty_s)
        self.throttle_cut = throttle_cut
        self.min_rate_fraction = min_rate_fraction
        self.recovery_per_s = recovery_per_s
        self.ceiling_cut = ceiling_cut
        self._climb = ceiling_climb_per_s * self.rate
        self.throttle_guard_s = throttle_guard_s
        self.max_penalty_s = max_penalty_s
        self.circuit_window_s = circuit_window_s
        self.circuit_min_calls = circuit_min_calls
        self.circuit_error_ratio = circuit_error_ratio
        self.circuit_outage_ratio = circuit_outage_ratio
        self.circuit_cooldown_s = circuit_cooldown_s
        self.circuit_cooldown_max_s = circuit_cooldown_max_s
        self.half_open_fraction = half_open_fraction
        self.half_open_min_calls = half_open_min_calls
        self.half_open_sample_s = half_open_sample_s
        # The horizon must hold at least one half-open slot, or nobody could ever reserve one.
        self.half_open_horizon_s = max(half_open_horizon_s, 1.5 / (self._paced_rate * half_open_fraction))
        self.recheck_after_s = recheck_after_s
        self.result_flush_s = result_flush_s
        self.key_ttl_s = key_ttl_s

        self._redis = redis_client
        self._clock = clock
        self._sleep = sleep
        self._scripts: dict[str, Script] = {
            name: redis_client.register_script(_script_source(name))
            for name in ("acquire", "throttled", "record", "state")
        }
        self._lock = threading.Lock()
        self._pending_ok = 0
        self._pending_err = 0
        self._last_flush = -math.inf
        # What this process last heard of the circuit; it decides whether results may wait.
        self._circuit_seen = CircuitState.CLOSED

    @classmethod
    def from_settings(cls, redis_client: redis.Redis, settings: Settings, **overrides: Any) -> FleetLimiter:
        """The limiter for the configured project and API endpoint."""
        if settings.project_id is None or settings.api_endpoint is None:
            raise ValueError("the limiter needs the project ID and the API endpoint")
        params: dict[str, Any] = {
            "key": limiter_key(settings.key_prefix, settings.project_id, settings.api_endpoint),
            "rate": settings.rate_limit,
            "burst": settings.rate_burst,
            "wait_max_s": settings.rate_wait_max_s,
            "penalty_s": settings.throttle_penalty_s,
            "spacing_margin": settings.rate_headroom,
            "start_ramp_s": settings.rate_ramp_s,
            "circuit_error_ratio": settings.circuit_error_ratio,
            "half_open_fraction": settings.half_open_fraction,
        }
        params.update(overrides)
        return cls(redis_client, **params)

    @property
    def recovery_s(self) -> float:
        """Documented time from the end of a 429's pause back to the full rate (one 429)."""
        return recovery_time_s(self.throttle_cut, self.recovery_per_s)

    # --- Slots ----------------------------------------------------------------------------
    def acquire(self, cancel: threading.Event | None = None) -> float:
        """Block until this process may send one request; return the seconds waited.

        Sleeps exactly the wait Redis answers (once per reservation, never polling), and raises
        :class:`RateLimitWaitTooLong` *before* sleeping if the slot is further away than
        ``wait_max_s`` in total.

        With ``cancel``, every sleep is ``cancel.wait(t)`` instead of the injected ``sleep``, and
        :class:`RateLimitCancelled` is raised as soon as the event is set (before the call, or
        during any wait): a job that stops must not sit out a reservation or a cool-down first.
        """
        start = self._clock()
        while True:
            if cancel is not None and cancel.is_set():
                raise RateLimitCancelled(round(self._clock() - start, 6))
            waited = self._clock() - start
            budget_us = max(0, int((self.wait_max_s - waited) * _US))
            code, wait_us, epoch, circuit = self._run(
                "acquire",
                [
                    self._paced_rate,
                    self.burst,
                    budget_us,
                    self.recovery_per_s * self.rate,
                    self.half_open_fraction,
                    round(self.key_ttl_s * 1000),
                    self.start_fraction,
                    self._start_slope,
                    round(self.idle_s * _US),
                    self._climb,
                    round(self.half_open_horizon_s * _US),
                ],
            )
            self._circuit_seen = CircuitState(int(circuit))
            if code == _GO:
                return self._clock() - start
            wait = int(wait_us) / _US
            if code == _TOO_LONG:
                raise RateLimitWaitTooLong(round(waited, 6), wait)
            if cancel is None:
                self._sleep(wait)  # _RESERVED or _HELD
            elif cancel.wait(wait):
                raise RateLimitCancelled(round(self._clock() - start, 6))
            if code == _RESERVED and (wait < self.recheck_after_s or self._epoch() == int(epoch)):
                return self._clock() - start
            # Held by the circuit, or a 429 / an opening circuit voided the reservation: ask again.

    def _epoch(self) -> int:
        value = self._redis.hget(self.key, "ep")
        return int(value) if value is not None else 0

    # --- Signals from the API -------------------------------------------------------------
    def throttled(self, retry_after_s: float | None) -> None:
        """The API answered 429: pause and slow the whole fleet (see the module docstring)."""
        if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
            pause = retry_after_s
        else:
            pause = self.penalty_s
        # A Retry-After of hours would silently freeze every worker; acquire's wait bound then
        # turns the long pause into errors the operator sees instead.
        pause = min(pause, self.max_penalty_s)
        self._run(
            "throttled",
            [
                self.rate,
                self.burst,
                round(pause * _US),
                self.throttle_cut,
                self.rate * self.min_rate_fraction,
                self.recovery_per_s * self.rate,
                round(self.throttle_guard_s * _US),
                round(self.key_ttl_s * 1000),
                self.ceiling_cut,
                self._climb,
            ],
        )

    def record_result(self, server_error: bool) -> None:
        """Count one request's outcome for the circuit.

        ``server_error``: a 5xx, or no answer at all (timeout, connection reset). Any other answer,
        4xx included, shows the service is up: pass ``False``. A 429 is not a result: call
        :meth:`throttled` instead.
        """
        with self._lock:
            if server_error:
                self._pending_err += 1
            else:
                self._pending_ok += 1
            now = self._clock()
            urgent = server_error or self._circuit_seen != CircuitState.CLOSED
            if not urgent and now - self._last_flush < self.result_flush_s:
                return
            ok, err = self._take_pending(now)
        self._send_results(ok, err)

    def flush(self) -> None:
        """Send results still batched in this process (e.g. before the process exits)."""
        with self._lock:
            ok, err = self._take_pending(self._clock())
        if ok or err:
            self._send_results(ok, err)

    def _take_pending(self, now: float) -> tuple[int, int]:
        ok, err = self._pending_ok, self._pending_err
        self._pending_ok = self._pending_err = 0
        self._last_flush = now
        return ok, err

    def _send_results(self, ok: int, err: int) -> None:
        circuit, _opened = self._run(
            "record",
            [
                ok,
                err,
                self.circuit_window_s,
                self.circuit_min_calls,
                self.circuit_error_ratio,
                round(self.circuit_cooldown_s * _US),
                round(self.circuit_cooldown_max_s * _US),
                round(self.key_ttl_s * 1000),
                self.half_open_min_calls,
                round(self.half_open_sample_s * _US),
                self.circuit_outage_ratio,
            ],
        )
        self._circuit_seen = CircuitState(int(circuit))

    # --- Observation ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The shared state now, for metrics and the CLI (read-only, one round trip).

        ``tat_ahead_s`` is how far the GCRA's theoretical arrival time runs ahead of now: above
        ``(burst - 1) / rate`` the next request waits, so it reads as the fleet's queue.
        ``ceiling_rate`` is the ceiling the last 429 left (the configured rate when none is lower).
        """
        values = [
            _text(v)
            for v in self._run(
                "state", [self.rate, self.recovery_per_s * self.rate, self.circuit_window_s, self._climb]
            )
        ]
        circuit = CircuitState(int(values[2]))
        return {
            "key": self.key,
            "configured_rate": self.rate,
            "burst": self.burst,
            "effective_rate": float(values[0]),
            "penalty_remaining_s": float(values[1]) / _US,
            "circuit": circuit.label,
            "circuit_remaining_s": float(values[3]) / _US,
            "opened_count": int(values[4]),
            "open_streak": int(values[5]),
            "throttled_count": int(values[6]),
            "rate_cuts": int(values[7]),
            "window_ok": int(values[8]),
            "window_errors": int(values[9]),
            "tat_ahead_s": float(values[10]) / _US,
            "ceiling_rate": float(values[11]),
            "sample_ok": int(values[12]),
            "sample_errors": int(values[13]),
        }

    def _run(self, name: str, args: Sequence[float | int]) -> list[Any]:
        return list(self._scripts[name](keys=[self.key], args=[str(a) for a in args]))
