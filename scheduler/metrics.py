"""Prometheus metrics for dashboards, read from Redis on every scrape.

The collector keeps no counters of its own: each scrape reads the runs' ledgers, the queues
and the fleet limiter from Redis, so the figures are fleet-wide and the same whichever process
serves them (run one exporter, or several behind one scrape job). ``sfs-cleanup metrics``
serves them on ``127.0.0.1:9808/metrics`` by default.

The API families are summed by every worker process (:mod:`worker.apimetrics`) into one Redis
hash, so they too are fleet-wide; their labels are bounded (three operations, HTTP statuses,
the API's known error codes, ``none`` and ``other``).

Exported runs are bounded: the ``recent_runs`` newest runs plus every active run among the
``scan_runs`` newest, so the number of series stays small however long the history is.

======================================================  =======  =============================
metric                                                  type     labels
======================================================  =======  =============================
``sfs_cleanup_up``                                      gauge    (1: Redis answered the scrape)
``sfs_cleanup_scrape_duration_seconds``                 gauge
``sfs_cleanup_queue_messages``                          gauge    queue (waiting jobs, as kombu counts them)
``sfs_cleanup_unacked_messages``                        gauge    (delivered, not yet acked)
``sfs_cleanup_redis_used_memory_bytes``                 gauge    (INFO memory of the fleet's Redis)
``sfs_cleanup_redis_maxmemory_bytes``                   gauge    (0: no limit set)
``sfs_cleanup_workers_online``                          gauge    (worker processes with a heartbeat < 60 s old)
``sfs_cleanup_api_request_duration_seconds``            hist.    operation (delete, show, list)
``sfs_cleanup_api_responses_total``                     counter  operation, status, error_code
``sfs_cleanup_runs_active``                             gauge
``sfs_cleanup_run_info``                                gauge    run_id, status, trigger, dry_run
``sfs_cleanup_run_selected_tasks``                      gauge    run_id
``sfs_cleanup_run_done_tasks``                          gauge    run_id (tasks with an outcome)
``sfs_cleanup_run_pending_tasks``                       gauge    run_id
``sfs_cleanup_run_open_batches``                        gauge    run_id (active runs)
``sfs_cleanup_run_outcomes_total``                      counter  run_id, outcome
``sfs_cleanup_run_attempts_total``                      counter  run_id
``sfs_cleanup_run_retries_total``                       counter  run_id
``sfs_cleanup_run_throttled_total``                     counter  run_id (429 answers)
``sfs_cleanup_run_created_timestamp_seconds``           gauge    run_id
``sfs_cleanup_run_finished_timestamp_seconds``          gauge    run_id (runs that are over)
``sfs_cleanup_last_run_finished_timestamp_seconds``     gauge    trigger (newest run over, of all scanned)
``sfs_cleanup_ratelimit_configured_rps``                gauge
``sfs_cleanup_ratelimit_effective_rps``                 gauge    (lower after 429s)
``sfs_cleanup_ratelimit_ceiling_rps``                   gauge    (left by 429s, climbing back)
``sfs_cleanup_ratelimit_penalty_remaining_seconds``     gauge    (fleet pause after a 429)
``sfs_cleanup_ratelimit_backlog_seconds``               gauge    (how far the GCRA runs ahead)
``sfs_cleanup_ratelimit_circuit_state``                 gauge    state (1 for the current one)
``sfs_cleanup_ratelimit_throttled_total``               counter  (429s reported to the limiter)
``sfs_cleanup_ratelimit_circuit_opened_total``          counter
======================================================  =======  =============================
"""

from __future__ import annotations

import signal
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import redis
import typer
from kombu.exceptions import ChannelError, OperationalError
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from worker.apimetrics import BUCKETS, OPERATIONS
from worker.audit import ACTIVE, OVER, Outcome
from worker.celery_app import CONTROL_QUEUE, DELETE_QUEUE
from worker.keys import Keys
from worker.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from celery import Celery

DEFAULT_PORT = 9808
PREFIX = "sfs_cleanup_"
_ACTIVE = {s.value for s in ACTIVE}
_OVER = {s.value for s in OVER}
_CIRCUIT_STATES = ("closed", "open", "half-open")
#: A worker process counts as online while its heartbeat (every 10 s) is younger than this.
WORKER_ONLINE_WINDOW_S = 60.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _num(value: str | None, default: float = 0.0) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default


# Per-run families: name -> (counter?, help, labels after run_id).
_RUN_FAMILIES: dict[str, tuple[bool, str, tuple[str, ...]]] = {
    "run_info": (False, "A run (value 1) with its status, trigger and dry-run flag.", ("status", "trigger", "dry_run")),
    "run_selected_tasks": (False, "Tasks selected by the run's frozen plan (-1 while planning).", ()),
    "run_done_tasks": (False, "Selected tasks that have their final outcome.", ()),
    "run_pending_tasks": (False, "Selected tasks still without an outcome.", ()),
    "run_open_batches": (False, "Batches of an active run with tasks still to do.", ()),
    "run_outcomes": (True, "Final outcomes of a run's tasks, by outcome.", ("outcome",)),
    "run_attempts": (True, "Attempts recorded for a run's tasks (API calls and local verdicts).", ()),
    "run_retries": (True, "Retries after 5xx answers, busy codes or lost connections.", ()),
    "run_throttled": (True, "429 (throttled) answers during the run.", ()),
    "run_created_timestamp_seconds": (False, "When the run was created (epoch seconds).", ()),
    "run_finished_timestamp_seconds": (False, "When the run ended (epoch seconds).", ()),
}


# The fleet limiter's families: name -> (counter?, help, field of FleetLimiter.state()).
_LIMITER_FAMILIES: dict[str, tuple[bool, str, str]] = {
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


def _run_families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
    for name, (is_counter, doc, labels) in _RUN_FAMILIES.items():
        kind = CounterMetricFamily if is_counter else GaugeMetricFamily
        families[name] = kind(PREFIX + name, doc, labels=["run_id", *labels])
    return families


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
        self.redis = redis_client or redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=3, socket_timeout=5
        )
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
        for key, value in raw.items():
            kind, _, rest = _text(key).partition("|")
            number = _num(_text(value))
            if kind == "n":
                parts = rest.split("|")
                if len(parts) == 3 and parts[0] in sums:
                    op, status, code = parts
                    responses[(op, status, code)] = number
            elif kind == "b":
                op, _, le = rest.partition("|")
                if op in buckets:
                    buckets[op][_bucket_index(le)] += number
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
        return [duration, answers]

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
                value=_num(str(info.get("used_memory", 0))),
            ),
            GaugeMetricFamily(
                PREFIX + "redis_maxmemory_bytes",
                "The fleet's Redis maxmemory (0: no limit; with noeviction, writes fail beyond it).",
                value=_num(str(info.get("maxmemory", 0))),
            ),
        ]

    # --- runs -----------------------------------------------------------------------------
    def _scan(self) -> tuple[list[str], dict[str, float]]:
        """The runs to export, and when the newest run of each trigger ended (over all scanned runs)."""
        ids = [_text(r) for r in self.redis.zrevrange(self.keys.runs, 0, self.scan_runs - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hmget(self.keys.run(run_id), "status", "trigger", "finished_at")
        chosen: list[str] = []
        newest_end: dict[str, float] = {}
        for n, (run_id, fields) in enumerate(zip(ids, pipe.execute(), strict=True)):
            status, trigger, finished_at = (_text(v) if v is not None else "" for v in fields)
            if n < self.recent_runs or status in _ACTIVE:
                chosen.append(run_id)
            if status in _OVER and finished_at:
                newest_end[trigger] = max(newest_end.get(trigger, 0.0), _num(finished_at))
        return chosen, newest_end

    def _runs(self) -> list[Metric]:
        run_ids, newest_end = self._scan()
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
            pipe.scard(self.keys.open_batches(run_id))
        answers = pipe.execute()
        f = _run_families()
        active = 0
        for n, run_id in enumerate(run_ids):
            raw, batches_open = answers[2 * n], int(answers[2 * n + 1])
            meta = {_text(k): _text(v) for k, v in raw.items()}
            if not meta:
                continue  # expired between the two reads
            status, trigger = meta.get("status", ""), meta.get("trigger", "")
            one = [run_id]
            f["run_info"].add_metric([run_id, status, trigger, "true" if meta.get("dry_run") == "1" else "false"], 1)
            total, finals = _num(meta.get("selected"), -1.0), _num(meta.get("finals"))
            f["run_selected_tasks"].add_metric(one, total)
            f["run_done_tasks"].add_metric(one, finals)
            f["run_pending_tasks"].add_metric(one, max(0.0, total - finals) if total >= 0 else 0.0)
            for outcome in Outcome:
                f["run_outcomes"].add_metric([run_id, outcome.value], _num(meta.get(f"n:{outcome.value}")))
            for name, field in (
                ("run_attempts", "attempts"),
                ("run_retries", "retries"),
                ("run_throttled", "throttled"),
            ):
                f[name].add_metric(one, _num(meta.get(field)))
            f["run_created_timestamp_seconds"].add_metric(one, _num(meta.get("created_at")))
            if status in _ACTIVE:
                active += 1
                f["run_open_batches"].add_metric(one, batches_open)
            if status in _OVER and meta.get("finished_at"):
                end = _num(meta.get("finished_at"))
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
            for name, (is_counter, doc, field) in _LIMITER_FAMILIES.items()
        ]
        circuit = GaugeMetricFamily(
            PREFIX + "ratelimit_circuit_state", "The 5xx circuit: 1 for its current state.", labels=["state"]
        )
        for name in _CIRCUIT_STATES:
            circuit.add_metric([name], 1.0 if state["circuit"] == name else 0.0)
        families.append(circuit)
        return families


def _bucket_index(le: str) -> int:
    """The exporter's bucket for a stored bound; a bound it does not know (another version's
    layout) goes to the next larger one, so no count is lost and none lands too low."""
    if le == "+Inf":
        return len(BUCKETS)
    return bisect_left(BUCKETS, _num(le, float("inf")))


def _declared_size(channel: Any, queue: str) -> int:
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except ChannelError:
        # kombu's Redis transport keeps no list for an empty queue, and a passive declare of a
        # queue with no list is "not found": nothing waits in it.
        return 0


def read_queues(app: Celery, queues: Iterable[str]) -> tuple[dict[str, int], int]:
    """(jobs waiting per queue, jobs delivered and not acknowledged), through kombu's own API.

    kombu counts every priority sub-queue of the Redis transport and honours the app's transport
    options (key prefix, unacked key), so this agrees with what the workers consume.
    """
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1)  # one try: a scrape must not sit in kombu's retry loop
        channel = conn.default_channel
        depths = {queue: _declared_size(channel, queue) for queue in queues}
        unacked = int(channel.client.hlen(channel.unacked_key))
    return depths, unacked


def broker_queue_depth(app: Celery, queue: str = DELETE_QUEUE) -> int:
    """Jobs waiting in one queue, priority sub-queues included (for the reconciler's "queue empty")."""
    depths, _ = read_queues(app, (queue,))
    return depths[queue]


def registry_for(settings: Settings, **collector_args: Any) -> CollectorRegistry:
    """A registry holding only the fleet collector (no process metrics of the serving process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings, **collector_args))
    return registry


def serve_metrics(settings: Settings, port: int, addr: str = "127.0.0.1") -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns (server, thread).

    ``port=0`` picks a free port: read it from ``server.server_port``.
    """
    server, thread = start_http_server(port, addr=addr, registry=registry_for(settings))
    return server, thread


def metrics(
    port: Annotated[
        int | None, typer.Option(help=f"Port to serve on (default: SFS_CLEANUP_METRICS_PORT, else {DEFAULT_PORT}).")
    ] = None,
    address: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 for every interface.")] = "127.0.0.1",
) -> None:
    """Serve Prometheus metrics (runs, outcomes, retries, 429s, queue depth, limiter) read from Redis."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        for line in exc.lines:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    chosen = port if port is not None else (settings.metrics_port or DEFAULT_PORT)
    try:
        server, _ = serve_metrics(settings, chosen, address)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {address}:{chosen}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"serving metrics on http://{address}:{server.server_port}/metrics")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
