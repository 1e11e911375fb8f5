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
``sfs_cleanup_api_target_responses_total``              counter  target, operation, status, error_code (targets file)
``sfs_cleanup_runs_active``                             gauge
``sfs_cleanup_run_info``                                gauge    run_id, status, trigger, dry_run
``sfs_cleanup_run_selected_tasks``                      gauge    run_id
``sfs_cleanup_run_done_tasks``                          gauge    run_id (tasks with an outcome)
``sfs_cleanup_run_pending_tasks``                       gauge    run_id
``sfs_cleanup_run_open_batches``                        gauge    run_id (active runs)
``sfs_cleanup_run_outcomes_total``                      counter  run_id, outcome
``sfs_cleanup_run_target_planned_tasks``                gauge    run_id, target (a targets file's runs)
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

from scheduler.metrics.collector import FleetCollector
from scheduler.metrics.families import DEFAULT_PORT, PREFIX, WORKER_ONLINE_WINDOW_S
from scheduler.metrics.queues import broker_queue_depth, read_queues
from scheduler.metrics.serve import metrics, registry_for, serve_metrics

__all__ = [
    "DEFAULT_PORT",
    "PREFIX",
    "WORKER_ONLINE_WINDOW_S",
    "FleetCollector",
    "broker_queue_depth",
    "metrics",
    "read_queues",
    "registry_for",
    "serve_metrics",
]
