"""The collector: every scrape reads the runs' ledgers, the queues and the limiter from Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import redis
from kombu.exceptions import OperationalError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from scheduler.metrics.families import (
    ACTIVE_STATUSES,
    CIRCUIT_STATES,
    LIMITER_FAMILIES,
    OVER_STATUSES,
    PREFIX,
    WORKER_ONLINE_WINDOW_S,
    bucket_index,
    num,
    run_families,
    text,
)
from scheduler.metrics.queues import read_queues
from worker.apimetrics import BUCKETS, OPERATIONS
from worker.jobnames import CONTROL_QUEUE, DELETE_QUEUE
from worker.ledger import Outcome, RunMeta
from worker.ledger.keys import Keys
from worker.redisconn import connect
from worker.settings import Settings

if TYPE_CHECKING:
    from celery import Celery


class FleetCollector:
    """A prometheus_client custom collector over the fleet's Redis state."""

    def __init__(
        self,
        settings: Settings,
        *,
        recent_runs: int = 20,
        scan_runs: int = 200,
        queues: Iterable[str] = (DELETE_QUEUE, CONTROL_QUEUE),
        redis_client: redis.Redis | None = None,
        app: Celery | None = None,
    ) -> None:
        self.settings = settings
        self.recent_runs = recent_runs
        self.scan_runs = max(scan_runs, recent_runs)
        self.queues = tuple(queues)
        self.keys = Keys(settings.key_prefix)
        # A scrape must answer within Prometheus' timeout (10 s by default), Redis or not.
        self.redis = redis_client or connect(settings, socket_timeout_s=5)
        self._app = app
        self._limiter: Any = None

    @property
    def app(self) -> Celery:
        """The fleet's Celery app: its broker URL and transport options are the workers' own."""
        if self._app is None:
            from worker.celery_app import create_app

            self._app = create_app(self.settings)
        return self._app

    def describe(self) -> list[Metric]:
        return []  # names are not registered up front: registration must not touch Redis

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        try:
            # Redis itself first: when it is down the scrape fails fast on the short-timeout
            # client instead of waiting for kombu's connection retries.
            families = [
                *self._runs(),
                *self._ratelimit(),
                *self._api(),
                *self._workers(),
                *self._redis_memory(),
                *self._archive(),
                *self._queues(),
            ]
            up = 1.0
        except (redis.RedisError, OperationalError):
            families, up = [], 0.0
        yield GaugeMetricFamily(PREFIX + "up", "1 if Redis answered this scrape, else 0.", value=up)
        yield from families
        yield GaugeMetricFamily(
            PREFIX + "scrape_duration_seconds",
            "Seconds this scrape took to read Redis.",
            value=time.perf_counter() - start,
        )

    # --- queues ---------------------------------------------------------------------------
    def _queues(self) -> list[Metric]:
        depths, unacked_count = read_queues(self.app, self.queues)
        depth = GaugeMetricFamily(PREFIX + "queue_messages", "Jobs waiting in a Celery queue.", labels=["queue"])
        for queue in self.queues:
            depth.add_metric([queue], depths[queue])
        unacked = GaugeMetricFamily(
            PREFIX + "unacked_messages",
            "Jobs delivered to a worker and not yet acknowledged (all queues).",
            value=unacked_count,
        )
        return [depth, unacked]

    # --- the API as the fleet sees it -----------------------------------------------------
    def _api(self) -> list[Metric]:
        raw = self.redis.hgetall(self.keys.api_metrics)
        buckets: dict[str, list[float]] = {op: [0.0] * (len(BUCKETS) + 1) for op in OPERATIONS}
        sums: dict[str, float] = dict.fromkeys(OPERATIONS, 0.0)
        responses: dict[tuple[str, str, str], float] = {}
        by_target: dict[tuple[str, str, str, str], float] = {}
        for key, value in raw.items():
            kind, _, rest = text(key).partition("|")
            number = num(text(value))
            if kind == "n":
                parts = rest.split("|")
                if len(parts) == 3 and parts[0] in sums:
                    op, status, code = parts
                    responses[(op, status, code)] = number
            elif kind == "t":
                parts = rest.split("|")
                if len(parts) == 4 and parts[0] in sums:
                    op, status, code, target = parts
                    by_target[(target, op, status, code)] = number
            elif kind == "b":
                op, _, le = rest.partition("|")
                if op in buckets:
                    buckets[op][bucket_index(le)] += number
            elif kind == "s" and rest in sums:
                sums[rest] = number
        duration = HistogramMetricFamily(
            PREFIX + "api_request_duration_seconds",
            "Latency of the SFS Turbo API calls of every worker process, by operation (an answer or none).",
            labels=["operation"],
        )
        for op in OPERATIONS:
            cumulative, total = [], 0.0
            for bound, count in zip([*map(repr, BUCKETS), "+Inf"], buckets[op], strict=True):
                total += count
                cumulative.append((bound, total))
            duration.add_metric([op], cumulative, sums[op])
        answers = CounterMetricFamily(
            PREFIX + "api_responses",
            "API answers of every worker process, by operation, HTTP status (none: no answer) and error code.",
            labels=["operation", "status", "error_code"],
        )
        for (op, status, code), count in sorted(responses.items()):
            answers.add_metric([op, status, code], count)
        targets = CounterMetricFamily(
            PREFIX + "api_target_responses",
            "API answers by target of the targets file (also counted in api_responses): operation, status, error code.",
            labels=["target", "operation", "status", "error_code"],
        )
        for key, count in sorted(by_target.items()):
            targets.add_metric(list(key), count)
        return [duration, answers, targets]

    # --- workers and Redis itself ---------------------------------------------------------
    def _workers(self) -> list[Metric]:
        online = self.redis.zcount(self.keys.workers, time.time() - WORKER_ONLINE_WINDOW_S, "+inf")
        return [
            GaugeMetricFamily(
                PREFIX + "workers_online",
                f"Worker processes whose heartbeat is younger than {WORKER_ONLINE_WINDOW_S:.0f} s.",
                value=int(online),
            )
        ]

    def _redis_memory(self) -> list[Metric]:
        try:
            info = self.redis.info("memory")
        except redis.ResponseError:
            return []  # some managed Redis services refuse INFO: the rest of the scrape still counts
        return [
            GaugeMetricFamily(
                PREFIX + "redis_used_memory_bytes",
                "Memory used by the fleet's Redis (INFO memory used_memory).",
                value=num(str(info.get("used_memory", 0))),
            ),
            GaugeMetricFamily(
                PREFIX + "redis_maxmemory_bytes",
                "The fleet's Redis maxmemory (0: no limit; with noeviction, writes fail beyond it).",
                value=num(str(info.get("maxmemory", 0))),
            ),
        ]

    # --- the archive ----------------------------------------------------------------------
    def _archive(self) -> list[Metric]:
        from scheduler.archive.index import ArchiveIndex

        stats = ArchiveIndex(self.redis, self.keys).stats()
        families: list[Metric] = [
            GaugeMetricFamily(
                PREFIX + "archive_pending_runs",
                "Ended runs whose evidence bundle is not yet in the archive target (their keys do not expire).",
                value=stats.pending,
            ),
            GaugeMetricFamily(
                PREFIX + "archive_failing_runs",
                "Pending runs whose latest archive try failed (retried with back-off).",
                value=stats.failing,
            ),
            GaugeMetricFamily(PREFIX + "archive_archived_runs", "Runs in the archive index.", value=stats.archived),
            CounterMetricFamily(
                PREFIX + "archive_failures", "Archive tries that failed (every scheduler).", value=stats.failures
            ),
        ]
        for name, at, doc in (
            ("archive_last_failure_timestamp_seconds", stats.last_failure_at, "When an archive try last failed."),
            ("archive_last_success_timestamp_seconds", stats.last_success_at, "When a run was last archived."),
        ):
            families.append(GaugeMetricFamily(PREFIX + name, doc + " (epoch seconds; 0: never)", value=at or 0.0))
        return families

    # --- runs -----------------------------------------------------------------------------
    def _scan(self) -> tuple[list[str], dict[str, float]]:
        """The runs to export, and when the newest run of each trigger ended (over all scanned runs)."""
        ids = [text(r) for r in self.redis.zrevrange(self.keys.runs, 0, self.scan_runs - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hmget(self.keys.run(run_id), "status", "trigger", "finished_at")
        chosen: list[str] = []
        newest_end: dict[str, float] = {}
        for n, (run_id, fields) in enumerate(zip(ids, pipe.execute(), strict=True)):
            status, trigger, finished_at = (text(v) if v is not None else "" for v in fields)
            if n < self.recent_runs or status in ACTIVE_STATUSES:
                chosen.append(run_id)
            if status in OVER_STATUSES and finished_at:
                newest_end[trigger] = max(newest_end.get(trigger, 0.0), num(finished_at))
        return chosen, newest_end

    def _runs(self) -> list[Metric]:
        run_ids, newest_end = self._scan()
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
            pipe.scard(self.keys.open_batches(run_id))
        answers = pipe.execute()
        f = run_families()
        active = 0
        for n, run_id in enumerate(run_ids):
            raw, batches_open = answers[2 * n], int(answers[2 * n + 1])
            meta = {text(k): text(v) for k, v in raw.items()}
            if not meta:
                continue  # expired between the two reads
            status, trigger = meta.get("status", ""), meta.get("trigger", "")
            one = [run_id]
            f["run_info"].add_metric([run_id, status, trigger, "true" if RunMeta.of(meta).dry_run else "false"], 1)
            total, finals = num(meta.get("selected"), -1.0), num(meta.get("finals"))
            f["run_selected_tasks"].add_metric(one, total)
            f["run_done_tasks"].add_metric(one, finals)
            f["run_pending_tasks"].add_metric(one, max(0.0, total - finals) if total >= 0 else 0.0)
            for outcome in Outcome:
                f["run_outcomes"].add_metric([run_id, outcome.value], num(meta.get(f"n:{outcome.value}")))
            for target, planned in _planned_by_target(meta).items():
                f["run_target_planned_tasks"].add_metric([run_id, target], planned)
            for name, field in (
                ("run_attempts", "attempts"),
                ("run_retries", "retries"),
                ("run_throttled", "throttled"),
            ):
                f[name].add_metric(one, num(meta.get(field)))
            f["run_created_timestamp_seconds"].add_metric(one, num(meta.get("created_at")))
            if status in ACTIVE_STATUSES:
                active += 1
                f["run_open_batches"].add_metric(one, batches_open)
            if status in OVER_STATUSES and meta.get("finished_at"):
                end = num(meta.get("finished_at"))
                f["run_finished_timestamp_seconds"].add_metric(one, end)
        last = GaugeMetricFamily(
            PREFIX + "last_run_finished_timestamp_seconds",
            "When the newest run of each trigger ended (epoch seconds; among the newest scanned).",
            labels=["trigger"],
        )
        for trigger, end in sorted(newest_end.items()):
            last.add_metric([trigger], end)
        runs_active = GaugeMetricFamily(
            PREFIX + "runs_active", "Runs running or stopping (among the newest scanned).", value=active
        )
        return [runs_active, *f.values(), last]

    # --- the fleet limiter ----------------------------------------------------------------
    def _ratelimit(self) -> list[Metric]:
        s = self.settings
        if s.project_id is None or s.api_endpoint is None:
            return []
        if self._limiter is None:
            from worker.ratelimit import FleetLimiter

            self._limiter = FleetLimiter.from_settings(self.redis, s)
        state: dict[str, Any] = self._limiter.state()
        families: list[Metric] = [
            (CounterMetricFamily if is_counter else GaugeMetricFamily)(PREFIX + name, doc, value=state[field])
            for name, (is_counter, doc, field) in LIMITER_FAMILIES.items()
        ]
        circuit = GaugeMetricFamily(
            PREFIX + "ratelimit_circuit_state", "The 5xx circuit: 1 for its current state.", labels=["state"]
        )
        for name in CIRCUIT_STATES:
            circuit.add_metric([name], 1.0 if state["circuit"] == name else 0.0)
        families.append(circuit)
        return families


def _planned_by_target(meta: dict[str, str]) -> dict[str, float]:
    """A run over a targets file: its planned tasks per target (from the plan's summary)."""
    if '"targets"' not in meta.get("summary", ""):
        return {}
    try:
        targets = json.loads(meta["summary"]).get("targets") or {}
    except (ValueError, AttributeError):
        return {}
    return {str(name): num(str(info.get("planned", 0))) for name, info in targets.items() if isinstance(info, dict)}
