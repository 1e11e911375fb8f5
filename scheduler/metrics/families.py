"""The metric families the exporter serves: their names, help texts and labels, in tables."""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from worker.apimetrics import BUCKETS
from worker.ledger import ACTIVE, OVER

if TYPE_CHECKING:
    pass


DEFAULT_PORT = 9808


PREFIX = "sfs_cleanup_"


ACTIVE_STATUSES = {s.value for s in ACTIVE}


OVER_STATUSES = {s.value for s in OVER}


CIRCUIT_STATES = ("closed", "open", "half-open")


#: A worker process counts as online while its heartbeat (every 10 s) is younger than this.
WORKER_ONLINE_WINDOW_S = 60.0


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def num(value: str | None, default: float = 0.0) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default


# Per-run families: name -> (counter?, help, labels after run_id).
RUN_FAMILIES: dict[str, tuple[bool, str, tuple[str, ...]]] = {
    "run_info": (False, "A run (value 1) with its status, trigger and dry-run flag.", ("status", "trigger", "dry_run")),
    "run_selected_tasks": (False, "Tasks selected by the run's frozen plan (-1 while planning).", ()),
    "run_done_tasks": (False, "Selected tasks that have their final outcome.", ()),
    "run_pending_tasks": (False, "Selected tasks still without an outcome.", ()),
    "run_open_batches": (False, "Batches of an active run with tasks still to do.", ()),
    "run_outcomes": (True, "Final outcomes of a run's tasks, by outcome.", ("outcome",)),
    "run_target_planned_tasks": (False, "Tasks planned per target of a run over a targets file.", ("target",)),
    "run_attempts": (True, "Attempts recorded for a run's tasks (API calls and local verdicts).", ()),
    "run_retries": (True, "Retries after 5xx answers, busy codes or lost connections.", ()),
    "run_throttled": (True, "429 (throttled) answers during the run.", ()),
    "run_created_timestamp_seconds": (False, "When the run was created (epoch seconds).", ()),
    "run_finished_timestamp_seconds": (False, "When the run ended (epoch seconds).", ()),
}


# The fleet limiter's families: name -> (counter?, help, field of FleetLimiter.state()).
LIMITER_FAMILIES: dict[str, tuple[bool, str, str]] = {
    "ratelimit_configured_rps": (False, "Requests per second allowed to the whole fleet.", "configured_rate"),
    "ratelimit_effective_rps": (
        False,
        "Requests per second allowed now (cut after 429s, recovering; half after an idle spell).",
        "effective_rate",
    ),
    "ratelimit_ceiling_rps": (
        False,
        "Highest rate allowed after 429s (0.9 x the rate that drew the last one, climbing back).",
        "ceiling_rate",
    ),
    "ratelimit_penalty_remaining_seconds": (
        False,
        "Seconds the fleet still pauses after a 429.",
        "penalty_remaining_s",
    ),
    "ratelimit_backlog_seconds": (
        False,
        "How far the limiter's schedule runs ahead of now (the fleet's wait for a slot).",
        "tat_ahead_s",
    ),
    "ratelimit_throttled": (True, "429 answers reported to the fleet limiter.", "throttled_count"),
    "ratelimit_circuit_opened": (True, "Times the 5xx circuit opened.", "opened_count"),
}


def run_families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
    for name, (is_counter, doc, labels) in RUN_FAMILIES.items():
        kind = CounterMetricFamily if is_counter else GaugeMetricFamily
        families[name] = kind(PREFIX + name, doc, labels=["run_id", *labels])
    return families


def bucket_index(le: str) -> int:
    """The exporter's bucket for a stored bound; a bound it does not know (another version's
    layout) goes to the next larger one, so no count is lost and none lands too low."""
    if le == "+Inf":
        return len(BUCKETS)
    return bisect_left(BUCKETS, num(le, float("inf")))
