"""The limiter's tuning: one immutable value, checked once, with the figures derived from it.

Every worker process builds the same tuning from the same settings; the Lua scripts receive it
as arguments on each call (the hash stores state, never configuration), so a fleet restarted
with a new rate takes it at the next request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["LimiterTuning", "recovery_time_s"]


def recovery_time_s(throttle_cut: float, recovery_per_s: float, *, from_fraction: float = 1.0) -> float:
    """Seconds after a 429's pause until the rate is back at the configured one.

    ``from_fraction`` is the effective rate (as a fraction of the configured one) when the 429
    arrived; the pause itself is not included.
    """
    return max(0.0, 1.0 - from_fraction * throttle_cut) / recovery_per_s


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


@dataclass(frozen=True, kw_only=True)
class LimiterTuning:
    """Rate, 429 back-off, circuit and slow start of a :class:`~worker.ratelimit.FleetLimiter`.

    The package docstring (:mod:`worker.ratelimit`) explains each knob and its default's effect.
    Invalid values raise :class:`ValueError` on construction (and on ``dataclasses.replace``).
    """

    # GCRA: slots per second, the burst allowance, and the longest wait acquire() accepts.
    rate: float
    burst: int
    wait_max_s: float
    # 429: the pause without Retry-After, the cut, the floor, the climb back, the guard between
    # two cuts, the longest pause honoured, and the ceiling a cut leaves and its climb.
    penalty_s: float
    throttle_cut: float = 0.5
    min_rate_fraction: float = 0.05
    recovery_per_s: float = 0.05
    throttle_guard_s: float = 1.0
    max_penalty_s: float = 300.0
    ceiling_cut: float = 0.9
    ceiling_climb_per_s: float = 0.0005
    # The 5xx circuit and its half-open sample.
    circuit_window_s: int = 10
    circuit_min_calls: int = 20
    circuit_error_ratio: float = 0.8
    circuit_outage_ratio: float = 0.95
    circuit_cooldown_s: float = 5.0
    circuit_cooldown_max_s: float = 60.0
    half_open_fraction: float = 0.5
    half_open_min_calls: int = 10
    half_open_sample_s: float = 5.0
    half_open_horizon_s: float = 1.0
    # Client side: the epoch re-check after a sleep, the batching of successes, the hash's TTL.
    recheck_after_s: float = 0.05
    result_flush_s: float = 0.25
    # The bank: up to this many slots reserved by one script call and handed out in this
    # process at their times (1: one call per slot; never at burst 1, see ``banks``); a
    # banked slot is never further ahead than ``recheck_after_s`` and may be handed out up to
    # ``bank_grace_s`` late (at most the burst tolerance, where the GCRA's bound still holds).
    bank_slots: int = 8
    bank_grace_s: float = 0.01
    key_ttl_s: float = 86400.0
    # Headroom and slow start after an idle spell (both off by default, on in the service).
    spacing_margin: float = 0.0
    start_ramp_s: float = 0.0
    start_fraction: float = 0.5
    idle_s: float = 1.0

    def __post_init__(self) -> None:
        for name in (
            "rate",
            "wait_max_s",
            "recovery_per_s",
            "circuit_cooldown_s",
            "half_open_sample_s",
            "half_open_horizon_s",
            "key_ttl_s",
            "ceiling_climb_per_s",
            "idle_s",
        ):
            _positive(name, getattr(self, name))
        _fractions(
            throttle_cut=self.throttle_cut,
            min_rate_fraction=self.min_rate_fraction,
            circuit_error_ratio=self.circuit_error_ratio,
            circuit_outage_ratio=self.circuit_outage_ratio,
            half_open_fraction=self.half_open_fraction,
            ceiling_cut=self.ceiling_cut,
            start_fraction=self.start_fraction,
        )
        _counts(
            burst=self.burst,
            circuit_window_s=self.circuit_window_s,
            circuit_min_calls=self.circuit_min_calls,
            half_open_min_calls=self.half_open_min_calls,
            bank_slots=self.bank_slots,
        )
        times = (
            self.penalty_s,
            self.throttle_guard_s,
            self.max_penalty_s,
            self.recheck_after_s,
            self.result_flush_s,
            self.start_ramp_s,
            self.bank_grace_s,
        )
        if min(times) < 0:
            raise ValueError("penalty, guard, recheck, flush and ramp times must not be negative")
        if self.circuit_cooldown_max_s < self.circuit_cooldown_s:
            raise ValueError("circuit_cooldown_max_s must be at least circuit_cooldown_s")
        if not 0 <= self.spacing_margin < 0.5:
            raise ValueError("spacing_margin must be in [0, 0.5)")
        # The scripts receive these as text: "20.0", never "20", whatever the caller passed.
        for name in ("rate", "wait_max_s", "penalty_s"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LimiterTuning:
        """The service's tuning (``SFS_CLEANUP_RATE_*`` and circuit settings), then ``overrides``.

        Overrides are applied before the checks, so only the final tuning has to be valid.
        """
        params: dict[str, Any] = {
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
        return cls(**params)

    # --- Derived figures, as the scripts receive them -------------------------------------
    @property
    def paced_rate(self) -> float:
        """The rate slots are spaced at: ``spacing_margin`` below the configured one.

        A gateway counts arrivals in a sliding second, and a request that leaves a few ms late
        next to on-time ones would otherwise make rate + 1 arrivals in some second. The service's
        2% tolerates 20 ms of lateness at any rate and keeps 0.98 of it (the rate benchmark saw
        429s at equal limits without it).
        """
        return self.rate * (1 - self.spacing_margin)

    @property
    def ramp_start_fraction(self) -> float:
        """Share of the rate the first slots after an idle spell get (0: no slow start)."""
        return self.start_fraction if self.start_ramp_s > 0 else 0.0

    @property
    def start_slope(self) -> float:
        """Slots per second gained per second of the slow start (0: no slow start)."""
        if self.start_ramp_s <= 0:
            return 0.0
        return self.paced_rate * (1 - self.start_fraction) / self.start_ramp_s

    @property
    def idle_spell_s(self) -> float:
        """A spell is idle when no slot was taken for ``idle_s``, or for two intervals at low rates."""
        return max(self.idle_s, 2 / self.paced_rate)

    @property
    def half_open_reach_s(self) -> float:
        """How far ahead a half-open slot may be reserved.

        At least one half-open slot must fit in it, or nobody could ever reserve one.
        """
        return max(self.half_open_horizon_s, 1.5 / (self.paced_rate * self.half_open_fraction))

    @property
    def banks(self) -> bool:
        """Whether slots are reserved several at a time. Not at burst 1: there the GCRA allows
        no lateness, so a banked slot that no thread of its process claims by its very time is
        lost to the whole fleet, and that happens whenever the threads are busy sending (the
        rate benchmark lost about 15% of R so). One script call per request costs nothing
        at the rates a burst of 1 is used for."""
        return self.bank_slots > 1 and self.burst > 1

    @property
    def bank_horizon_s(self) -> float:
        """How far ahead a banked slot may be: a reservation this short is never re-checked
        against a 429 or an opening circuit (``recheck_after_s``), banked or not."""
        return self.recheck_after_s

    @property
    def recovery_slope(self) -> float:
        """Slots per second gained per second after a 429's pause."""
        return self.recovery_per_s * self.rate

    @property
    def ceiling_slope(self) -> float:
        """Slots per second the ceiling a 429 leaves rises by, per second."""
        return self.ceiling_climb_per_s * self.rate

    @property
    def min_rate(self) -> float:
        """The floor no 429 cuts the rate below."""
        return self.rate * self.min_rate_fraction

    @property
    def key_ttl_ms(self) -> int:
        """The hash's idle lifetime, as ``PEXPIRE`` takes it."""
        return round(self.key_ttl_s * 1000)

    @property
    def recovery_s(self) -> float:
        """Documented time from the end of a 429's pause back to the full rate (one 429)."""
        return recovery_time_s(self.throttle_cut, self.recovery_per_s)
