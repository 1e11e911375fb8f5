"""Sending deletion jobs, and the reconciler that re-sends what the queue lost.

A job message carries only a run ID and a batch number (the plan is in Redis), so a run of a
million tasks is about ten thousand small messages. The queue is not the source of truth: a
worker killed at the wrong moment can lose a message for good, so the reconciler re-sends
any open batch that has had no lease and no progress for ``reconcile_after_s`` while the
deletion queue is empty. The ledger makes a second delivery harmless.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import structlog
from celery import Celery

from scheduler.metrics import broker_queue_depth
from worker.jobnames import DELETE_QUEUE, PURGE_BATCH
from worker.ledger import ACTIVE, OVER, Audit, RunStatus
from worker.settings import Settings

log = structlog.get_logger(__name__)


def send_batches(app: Celery, audit: Audit, run_id: str, numbers: Iterable[int]) -> int:
    """Enqueue one job per batch over one broker connection; returns how many were sent."""
    sent = 0
    with app.producer_or_acquire() as producer:
        for number in numbers:
            batch = audit.batch(run_id, number)
            if batch is None:
                continue
            app.send_task(
                PURGE_BATCH,
                kwargs={"run_id": run_id, "batch": number, "share_id": batch.share_id, "tasks": len(batch.task_ids)},
                queue=DELETE_QUEUE,
                producer=producer,
            )
            audit.touch(run_id, number)
            sent += 1
    return sent


def dispatch_run(app: Celery, audit: Audit, run_id: str) -> int:
    return send_batches(app, audit, run_id, audit.open_batches(run_id))


def queue_depth(audit: Audit, queue: str = DELETE_QUEUE) -> int:
    """Messages waiting in a queue (kombu's Redis transport keeps each queue in a list)."""
    return int(audit.redis.llen(queue))


def reconcile_run(app: Celery, audit: Audit, settings: Settings, run_id: str, *, now: float | None = None) -> int:
    """Re-send the open batches of an active run that nobody works on and nobody queued."""
    status, selected = audit.redis.hmget(audit.keys.run(run_id), ["status", "selected"])
    if status is None or RunStatus(_text(status)) not in ACTIVE:
        return 0
    if selected is None:
        return 0  # stopped while still planning: its planner ends it, and no batch may be sent
    if broker_queue_depth(app) > 0:
        return 0  # jobs are still waiting: none can be declared lost yet
    now = time.time() if now is None else now
    touches = audit.last_touch(run_id)
    stale = [
        number
        for number in audit.open_batches(run_id)
        if now - touches.get(number, 0) >= settings.reconcile_after_s and audit.lease_holder(run_id, number) is None
    ]
    if stale:
        log.warning("re-dispatching batches with no progress", run_id=run_id, batches=len(stale))
        audit.event("batches_redispatched", run_id=run_id, count=len(stale))
    return send_batches(app, audit, run_id, stale)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def reconcile_all(
    app: Celery, audit: Audit, settings: Settings, *, limit: int = 50, now: float | None = None
) -> dict[str, int]:
    """One reconciler pass over every active run; the periodic ``sfs.reconcile`` job calls it.

    The runs are those of the active index, however old, plus the ``limit`` most recent ones
    (runs created before the index existed are not in it).
    """
    done: dict[str, int] = {}
    recent = [meta.get("run_id", "") for meta in audit.list_runs(limit)]
    for run_id in dict.fromkeys([*audit.active_runs(), *recent]):
        status, selected = audit.redis.hmget(audit.keys.run(run_id), ["status", "selected"])
        if status is None or RunStatus(_text(status)) in OVER:
            audit.forget_active(run_id)  # its keys expired, or it ended without leaving the index
            continue
        if RunStatus(_text(status)) is RunStatus.HELD:
            expire_held(audit, settings, run_id, now=now)
        elif RunStatus(_text(status)) is RunStatus.PLANNING or selected is None:
            # A planner killed mid-plan (control worker lost) would leave the run planning for ever.
            audit.abandon_stale_planning(run_id, settings.planning_stale_s)
        else:
            done[run_id] = reconcile_run(app, audit, settings, run_id, now=now)
    return done


def expire_held(audit: Audit, settings: Settings, run_id: str, *, now: float | None = None) -> bool:
    """Cancel a held run nobody approved within ``approval_timeout_s``: its tasks end aborted."""
    held_at = audit.redis.hget(audit.keys.run(run_id), "held_at")
    now = time.time() if now is None else now
    if held_at is None or now - float(held_at) < settings.approval_timeout_s:
        return False
    # The reason is the bare word, so alerts and notifications can match it.
    return audit.request_stop(run_id, RunStatus.CANCELLED, "approval_timeout", only_held=True)
