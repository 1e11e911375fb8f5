"""The fleet limiter's client: a GCRA slot, the 429 signal and the 5xx results, one script each.

Everything shared lives in one Redis hash, changed only by the Lua scripts in ``lua/``; this
side sleeps the waits Redis answers and batches the results it sends. The algorithm, the
circuit and the cost are described in the package docstring (:mod:`worker.ratelimit`).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import redis

from worker.luascripts import scripts_for
from worker.ratelimit.circuit import CircuitState
from worker.ratelimit.errors import RateLimitCancelled, RateLimitWaitTooLong
from worker.ratelimit.keys import limiter_key
from worker.ratelimit.scripts import GO, RESERVED, SCRIPTS, TOO_LONG, script_source
from worker.ratelimit.tuning import LimiterTuning

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["FleetLimiter"]

_US: Final = 1_000_000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FleetLimiter:
    """A GCRA limiter, 429 back-off and 5xx circuit shared through one Redis hash.

    Thread-safe: one instance may serve every thread of a process. See the package docstring for
    the algorithm and the defaults' effects, :class:`LimiterTuning` for the knobs.

    ``tuning`` may be given as a :class:`LimiterTuning` or as its fields in keyword arguments
    (``FleetLimiter(r, key=k, rate=20.0, burst=5, wait_max_s=5.0, penalty_s=1.0)``); keyword
    arguments next to a ``tuning`` replace its fields.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        key: str,
        tuning: LimiterTuning | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        **tuning_fields: Any,
    ) -> None:
        if tuning is None:
            tuning = LimiterTuning(**tuning_fields)
        elif tuning_fields:
            tuning = replace(tuning, **tuning_fields)
        if not key:
            raise ValueError("key must not be empty")
        self.key = key
        self.tuning = tuning

        self._redis = redis_client
        self._clock = clock
        self._sleep = sleep
        # One EVALSHA per slot reservation, without redis-py's per-command layers (worker.luascripts).
        self._scripts = scripts_for(redis_client, {name: script_source(name) for name in SCRIPTS})
        self._lock = threading.Lock()
        # The bank: slots this process reserved in one script call and hands out at their
        # times, as [(due, last moment it may still be handed out)] in the clock's seconds,
        # earliest first. ``_bank_want`` is how many slots the last call asked for: the next
        # asks for twice as many, or half as many if a banked slot expired unused meanwhile.
        self._bank: list[tuple[float, float]] = []
        self._bank_lock = threading.Lock()
        self._bank_want = 1
        self._bank_expired = False
        self._pending_ok = 0
        self._pending_err = 0
        self._last_flush = -math.inf
        # What this process last heard of the circuit; it decides whether results may wait.
        self._circuit_seen = CircuitState.CLOSED
        # acquire.lua's arguments but the wait budget and the number of slots wanted, as text
        # once (they follow from the tuning, which never changes): building them per request
        # was a sixth of the limiter's CPU in the throughput profile.
        t = tuning
        self._acquire_args: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = (
            (str(t.paced_rate), str(t.burst)),
            tuple(
                str(a)
                for a in (
                    t.recovery_slope,
                    t.half_open_fraction,
                    t.key_ttl_ms,
                    t.ramp_start_fraction,
                    t.start_slope,
                    round(t.idle_spell_s * _US),
                    t.ceiling_slope,
                    round(t.half_open_reach_s * _US),
                )
            ),
            (str(round(t.bank_horizon_s * _US)), str(round(t.bank_grace_s * _US))),
        )

    @classmethod
    def from_settings(cls, redis_client: redis.Redis, settings: Settings, **overrides: Any) -> FleetLimiter:
        """The limiter for the configured project and API endpoint.

        ``overrides``: fields of :class:`LimiterTuning`, or ``key``, ``clock``, ``sleep``.
        """
        if settings.project_id is None or settings.api_endpoint is None:
            raise ValueError("the limiter needs the project ID and the API endpoint")
        key = limiter_key(settings.key_prefix, settings.project_id, settings.api_endpoint)
        key = overrides.pop("key", key)
        clock: Callable[[], float] = overrides.pop("clock", time.monotonic)
        sleep: Callable[[float], None] = overrides.pop("sleep", time.sleep)
        return cls(redis_client, key, LimiterTuning.from_settings(settings, **overrides), clock=clock, sleep=sleep)

    # --- The tuning's headline figures (read-only) ----------------------------------------
    @property
    def rate(self) -> float:
        return self.tuning.rate

    @property
    def burst(self) -> int:
        return self.tuning.burst

    @property
    def wait_max_s(self) -> float:
        return self.tuning.wait_max_s

    @property
    def penalty_s(self) -> float:
        return self.tuning.penalty_s

    @property
    def circuit_min_calls(self) -> int:
        return self.tuning.circuit_min_calls

    @property
    def recovery_s(self) -> float:
        """Documented time from the end of a 429's pause back to the full rate (one 429)."""
        return self.tuning.recovery_s

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
        t = self.tuning
        start = self._clock()
        if cancel is not None and cancel.is_set():
            raise RateLimitCancelled(0.0)
        due = self._claim_banked(start)
        if due is not None:
            return self._hand_out(due, start, cancel)
        while True:
            if cancel is not None and cancel.is_set():
                raise RateLimitCancelled(round(self._clock() - start, 6))
            waited = self._clock() - start
            budget_us = max(0, int((t.wait_max_s - waited) * _US))
            want = self._next_want() if t.banks else 1
            head, middle, tail = self._acquire_args
            reply = self._run_texts("acquire", [*head, str(budget_us), *middle, str(want), *tail])
            code, wait_us, epoch, circuit = reply[:4]
            self._circuit_seen = CircuitState(int(circuit))
            if len(reply) > 5:
                self._deposit(int(reply[4]), [int(w) for w in reply[5:]])
            if code == GO:
                return self._clock() - start
            wait = int(wait_us) / _US
            if code == TOO_LONG:
                raise RateLimitWaitTooLong(round(waited, 6), wait)
            if cancel is None:
                self._sleep(wait)  # RESERVED or HELD
            elif cancel.wait(wait):
                raise RateLimitCancelled(round(self._clock() - start, 6))
            if code == RESERVED and (wait < t.recheck_after_s or self._epoch() == int(epoch)):
                return self._clock() - start
            # Held by the circuit, or a 429 / an opening circuit voided the reservation: ask again.

    def _hand_out(self, due: float, start: float, cancel: threading.Event | None) -> float:
        """Wait for a banked slot's time (interruptibly with ``cancel``); the seconds waited."""
        wait = due - start
        if wait > 0:
            if cancel is None:
                self._sleep(wait)
            elif cancel.wait(wait):
                raise RateLimitCancelled(round(self._clock() - start, 6))
        return self._clock() - start

    def _claim_banked(self, now: float) -> float | None:
        """The earliest banked slot still good to hand out (its due time), or ``None``.

        Slots past their last moment are dropped (lost: that can only lower the rate).
        """
        if not self._bank:
            return None
        with self._bank_lock:
            expired = 0
            while self._bank and self._bank[0][1] < now:
                self._bank.pop(0)
                expired += 1
            if expired:
                self._bank_expired = True
            if not self._bank:
                return None
            due, _ = self._bank.pop(0)
            return due

    def _next_want(self) -> int:
        """How many slots to ask for: twice the last number while no banked slot expired
        unused since the last call, half of it otherwise (1 when banking is off)."""
        with self._bank_lock:
            if self._bank_expired:
                self._bank_want = max(1, self._bank_want // 2)
            else:
                self._bank_want = min(self.tuning.bank_slots, self._bank_want * 2)
            self._bank_expired = False
            return self._bank_want

    def _deposit(self, grace_us: int, waits_us: list[int]) -> None:
        """Bank the further slots of one reply (waits counted from now)."""
        now = self._clock()
        grace = grace_us / _US
        with self._bank_lock:
            for wait_us in waits_us:
                due = now + wait_us / _US
                bisect.insort(self._bank, (due, due + grace))

    def drop_bank(self) -> None:
        """Forget the slots banked in this process (a 429 or a circuit not closed: they are void)."""
        with self._bank_lock:
            self._bank.clear()
            self._bank_want = 1

    def _epoch(self) -> int:
        value = self._redis.hget(self.key, "ep")
        return int(value) if value is not None else 0

    # --- Signals from the API -------------------------------------------------------------
    def throttled(self, retry_after_s: float | None) -> None:
        """The API answered 429: pause and slow the whole fleet (see the package docstring)."""
        t = self.tuning
        self.drop_bank()
        if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
            pause = retry_after_s
        else:
            pause = t.penalty_s
        # A Retry-After of hours would silently freeze every worker; acquire's wait bound then
        # turns the long pause into errors the operator sees instead.
        pause = min(pause, t.max_penalty_s)
        self._run(
            "throttled",
            [
                t.rate,
                t.burst,
                round(pause * _US),
                t.throttle_cut,
                t.min_rate,
                t.recovery_slope,
                round(t.throttle_guard_s * _US),
                t.key_ttl_ms,
                t.ceiling_cut,
                t.ceiling_slope,
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
            if not urgent and now - self._last_flush < self.tuning.result_flush_s:
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
        t = self.tuning
        circuit, _opened = self._run(
            "record",
            [
                ok,
                err,
                t.circuit_window_s,
                t.circuit_min_calls,
                t.circuit_error_ratio,
                round(t.circuit_cooldown_s * _US),
                round(t.circuit_cooldown_max_s * _US),
                t.key_ttl_ms,
                t.half_open_min_calls,
                round(t.half_open_sample_s * _US),
                t.circuit_outage_ratio,
            ],
        )
        self._circuit_seen = CircuitState(int(circuit))
        if self._circuit_seen != CircuitState.CLOSED:
            self.drop_bank()

    # --- Observation ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The shared state now, for metrics and the CLI (read-only, one round trip).

        ``tat_ahead_s`` is how far the GCRA's theoretical arrival time runs ahead of now: above
        ``(burst - 1) / rate`` the next request waits, so it reads as the fleet's queue.
        ``ceiling_rate`` is the ceiling the last 429 left (the configured rate when none is lower).
        """
        t = self.tuning
        values = [_text(v) for v in self._run("state", [t.rate, t.recovery_slope, t.circuit_window_s, t.ceiling_slope])]
        circuit = CircuitState(int(values[2]))
        return {
            "key": self.key,
            "configured_rate": t.rate,
            "burst": t.burst,
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
        return self._run_texts(name, [str(a) for a in args])

    def _run_texts(self, name: str, args: list[str]) -> list[Any]:
        return list(self._scripts.call(name, [self.key], args))
