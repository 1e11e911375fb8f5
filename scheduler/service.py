"""The scheduler as a service: control jobs on the ``sfs.control`` queue.

``celery -A scheduler worker`` runs these next to the deletion jobs: message triggers from
other systems (``sfs.start_purge``, ``sfs.delete_tasks``), the nightly purge that beat sends
(``sfs.nightly_purge``), and the reconciler (``sfs.reconcile``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from celery import Celery, Task
from pydantic import ValidationError

from scheduler.context import Context
from scheduler.triggers import DeleteTasks, StartPurge, explain_error
from worker.celery_app import DELETE_TASKS, NIGHTLY, RECONCILE, START_PURGE, cron_schedule, settings_of
from worker.models import TaskInfo

log = structlog.get_logger(__name__)

_TRIGGER_TTL_S = 7 * 86400


def last_slot(expression: str, tz: str, now: datetime) -> datetime:
    """The most recent time at or before ``now`` that the cron expression names (minute precision).

    Beat may send late (a restart, a slow failover) or twice (a manual trigger of the same slot);
    every such message maps to the same slot, and the slot is what is claimed once.
    """
    cron = cron_schedule(expression, tz)
    local = now.astimezone(ZoneInfo(tz)).replace(second=0, microsecond=0)
    for minutes in range(0, 60 * 24 * 366):
        t = local - timedelta(minutes=minutes)
        if (
            t.minute in cron.minute
            and t.hour in cron.hour
            and t.day in cron.day_of_month
            and t.month in cron.month_of_year
            and (t.isoweekday() % 7) in cron.day_of_week
        ):
            return t.astimezone(UTC)
    raise ValueError(f"cron {expression!r} names no time in the past year")


def _claim(ctx: Context, key: str) -> str | None:
    """Claim an idempotency key for a new run; return the run that already holds it, if any."""
    from worker.audit import new_run_id

    run_id = new_run_id()
    full = f"{ctx.settings.key_prefix}:trigger:{key}"
    if ctx.redis.set(full, run_id, nx=True, ex=_TRIGGER_TTL_S):
        return None
    existing = ctx.redis.get(full)
    return existing.decode() if isinstance(existing, bytes) else str(existing)


def _reject(ctx: Context, name: str, message_id: str | None, error: str) -> dict[str, Any]:
    ctx.audit.event("trigger_rejected", task=name, message_id=message_id or "", error=error[:2000])
    log.warning("trigger rejected", task=name, error=error[:500])
    return {"accepted": False, "error": error}


def start_purge(ctx: Context, trigger: StartPurge, *, source: str) -> dict[str, Any]:
    from scheduler.policy import policy_from_sources
    from scheduler.runs import inventory, start_run

    if trigger.idempotency_key and (existing := _claim(ctx, trigger.idempotency_key)):
        return {"accepted": True, "run_id": existing, "duplicate": True}
    overrides = trigger.policy.model_dump(exclude_none=True)
    policy = policy_from_sources(settings=ctx.settings, file=None, overrides=overrides)
    items, inv_source = inventory(ctx, policy, None)
    plan = start_run(
        ctx,
        policy,
        items,
        source=inv_source,
        dry_run=trigger.dry_run,
        trigger=source,
        extra_meta={"requested_by": trigger.requested_by},
    )
    return {"accepted": True, "run_id": plan.run_id, "selected": plan.selected}


def register(app: Celery) -> None:
    settings = settings_of(app)

    def ctx() -> Context:
        return Context(settings)

    @app.task(name=START_PURGE, bind=True, acks_late=True, time_limit=4 * 3600, soft_time_limit=4 * 3600 - 60)
    def start_purge_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Start a purge by policy. Keyword arguments: see ``scheduler.triggers.StartPurge``."""
        c = ctx()
        if args:
            return _reject(c, START_PURGE, self.request.id, "positional arguments are not accepted; send kwargs")
        try:
            trigger = StartPurge.model_validate(kwargs)
        except ValidationError as exc:
            return _reject(c, START_PURGE, self.request.id, explain_error(exc))
        return start_purge(c, trigger, source="message")

    @app.task(name=DELETE_TASKS, bind=True, acks_late=True)
    def delete_tasks_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Delete an explicit list of tasks. Keyword arguments: see ``scheduler.triggers.DeleteTasks``."""
        from scheduler.policy import policy_from_sources
        from scheduler.runs import start_run

        c = ctx()
        if args:
            return _reject(c, DELETE_TASKS, self.request.id, "positional arguments are not accepted; send kwargs")
        try:
            trigger = DeleteTasks.model_validate(kwargs)
        except ValidationError as exc:
            return _reject(c, DELETE_TASKS, self.request.id, explain_error(exc))
        if c.settings.project_id is None:
            return _reject(c, DELETE_TASKS, self.request.id, "SFS_CLEANUP_PROJECT_ID is not set on the scheduler")
        if trigger.idempotency_key and (existing := _claim(c, trigger.idempotency_key)):
            return {"accepted": True, "run_id": existing, "duplicate": True}
        items = (TaskInfo(c.settings.project_id, t.share_id, t.task_id) for t in trigger.tasks)
        policy = policy_from_sources(settings=c.settings, file=None, overrides={})
        plan = start_run(
            c,
            policy,
            items,
            source="message:delete_tasks",
            dry_run=trigger.dry_run,
            trigger="message",
            explicit=True,
            extra_meta={"requested_by": trigger.requested_by, "request_reason": trigger.reason},
        )
        return {"accepted": True, "run_id": plan.run_id, "selected": plan.selected}

    @app.task(name=NIGHTLY, bind=True, acks_late=True, time_limit=4 * 3600, soft_time_limit=4 * 3600 - 60)
    def nightly_task(self: Task, slot: str | None = None) -> dict[str, Any]:
        """The scheduled purge: exactly one run per schedule slot, however often it is sent."""
        c = ctx()
        when = (
            datetime.fromisoformat(slot)
            if slot
            else last_slot(settings.schedule_cron, settings.schedule_timezone, datetime.now(UTC))
        )
        key = f"nightly-{when:%Y%m%dT%H%MZ}"
        return start_purge(c, StartPurge(idempotency_key=key), source="schedule")

    @app.task(name=RECONCILE, acks_late=False, ignore_result=True)
    def reconcile_task() -> dict[str, int]:
        """Re-send jobs of active runs that the queue lost (beat sends this every minute)."""
        from scheduler.dispatch import reconcile_all

        c = ctx()
        return reconcile_all(c.app, c.audit, settings)
