"""The scheduler as a service: control jobs on the ``sfs.control`` queue.

``celery -A scheduler worker`` runs these next to the deletion jobs: message triggers from
other systems (``sfs.start_purge``, ``sfs.delete_tasks``), the nightly purge that beat sends
(``sfs.nightly_purge``), and the reconciler (``sfs.reconcile``).

A trigger is refused (event ``trigger_rejected`` in the audit, nothing deleted) when its
arguments do not match :mod:`scheduler.triggers`, and also when the message itself is not a
well-formed Celery protocol 2 message: such a message is checked before Celery builds a request
from it (a JSON object as the body would otherwise stop the worker), acknowledged, and recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from celery import Celery, Task, signals
from pydantic import ValidationError

from scheduler.context import Context
from scheduler.cron import last_slot
from scheduler.jobs import CONTROL_QUEUE, DELETE_TASKS, NIGHTLY, RECONCILE, START_PURGE
from scheduler.policies import schedule_of, schedules
from scheduler.triggers import DeleteTasks, NightlyPurge, StartPurge, explain_error
from worker.envelope import guarded
from worker.jobnames import settings_of
from worker.ledger import Source, SourceKind, Trigger
from worker.models import TaskInfo
from worker.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

_TRIGGER_TTL_S = 7 * 86400
_MAX_ID_CHARS = 255


def _trigger_key(ctx: Context, key: str) -> str:
    return ctx.audit.keys.trigger(key)


def _claim(ctx: Context, key: str) -> tuple[str, str | None]:
    """Claim an idempotency key for a new run: (the new run's ID, the run that already holds it)."""
    from worker.ledger import new_run_id

    run_id = new_run_id()
    full = _trigger_key(ctx, key)
    if ctx.redis.set(full, run_id, nx=True, ex=_TRIGGER_TTL_S):
        return run_id, None
    existing = ctx.redis.get(full)
    return run_id, existing.decode() if isinstance(existing, bytes) else str(existing)


def _reject(ctx: Context, name: str, message_id: str | None, error: str) -> dict[str, Any]:
    ctx.audit.event("trigger_rejected", task=name, message_id=(message_id or "")[:_MAX_ID_CHARS], error=error[:2000])
    log.warning("trigger rejected", task=name, message_id=message_id, error=error[:500])
    return {"accepted": False, "error": error}


def _start_claimed(ctx: Context, key: str | None, start: Callable[[str | None], dict[str, Any]]) -> dict[str, Any]:
    """Run ``start(run_id)`` under an idempotency key: a key already held starts nothing."""
    if not key:
        return start(None)
    run_id, existing = _claim(ctx, key)
    if existing is not None and ctx.audit.abandon_stale_planning(existing, ctx.settings.planning_stale_s):
        run_id, existing = _claim(ctx, key)  # its planner died: this trigger starts the run afresh
    if existing is not None:
        ctx.audit.event("trigger_duplicate", key=key, run_id=existing)
        return {"accepted": True, "run_id": existing, "duplicate": True}
    try:
        return start(run_id)
    except BaseException:
        # Nothing was sent: a redelivery, or the nightly catch-up, may try again. A run that was
        # created and then failed in planning gave the key back when it was abandoned (Audit.abandon).
        if not ctx.audit.run(run_id):
            ctx.audit.release_trigger(key, run_id)
        raise


def start_purge(
    ctx: Context, trigger: StartPurge, *, started_by: Trigger, extra_meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    from scheduler.policies import named_policy
    from scheduler.policy import policy_from_sources
    from scheduler.runs import inventory, start_run

    overrides = trigger.policy.model_dump(exclude_none=True)
    named = named_policy(ctx.settings, trigger.policy_name) if trigger.policy_name else None
    policy = policy_from_sources(settings=ctx.settings, file=None, overrides=overrides, named=named)

    def start(run_id: str | None) -> dict[str, Any]:
        items, inv_source = inventory(ctx, policy, None)
        plan = start_run(
            ctx,
            policy,
            items,
            source=inv_source,
            dry_run=trigger.dry_run,
            trigger=started_by,
            run_id=run_id,
            hold="anomaly",
            extra_meta={"requested_by": trigger.requested_by, "idempotency_key": trigger.idempotency_key}
            | (extra_meta or {}),
        )
        return {"accepted": True, "run_id": plan.run_id, "selected": plan.selected}

    return _start_claimed(ctx, trigger.idempotency_key, start)


# --- The nightly purge's safety net ------------------------------------------------------------

CATCH_UP_AFTER_S = 120
CATCH_UP_WITHIN_S = 1800


def catch_up_nightly(ctx: Context, now: datetime) -> str | None:
    """Send ``sfs.nightly_purge`` for the latest slot if beat's message for it was lost.

    Beat records a slot as sent *before* it publishes, so a beat killed (or a Redis error) at that
    moment loses the night's run. The reconciler (every minute) therefore checks the latest slot
    between ``CATCH_UP_AFTER_S`` and ``CATCH_UP_WITHIN_S`` after it: if no run has claimed it,
    it sends the message once, naming the slot. A second message for a slot is harmless (the
    slot key), so this can only fill a gap, never double a run. Returns the slot sent, if any.
    """
    if not ctx.settings.schedule_enabled:
        return None
    sent = None
    for schedule in schedules(ctx.settings):  # each scheduled policy has its own slots
        slot = last_slot(schedule.cron, schedule.timezone, now)
        age = (now - slot).total_seconds()
        if not CATCH_UP_AFTER_S <= age <= CATCH_UP_WITHIN_S:
            continue
        key = _trigger_key(ctx, schedule.key(slot))
        if ctx.redis.exists(key) or not ctx.redis.set(f"{key}:catch-up", "1", nx=True, ex=CATCH_UP_WITHIN_S):
            continue
        sent = slot.isoformat().replace("+00:00", "Z")
        named = {} if schedule.policy is None else {"policy": schedule.policy}
        ctx.app.send_task(NIGHTLY, kwargs={"slot": sent} | named, queue=CONTROL_QUEUE)
        ctx.audit.event("nightly_catch_up", slot=sent, **named)
        log.warning("no run claimed the latest schedule slot; sending the nightly purge again", slot=sent, **named)
    return sent


def unclaimed_nightly_slots(ctx: Context, now: datetime) -> list[tuple[datetime, str | None]]:
    """The latest schedule slot if it is past the catch-up window and no run claimed it: a missed
    night, for :mod:`scheduler.notify`, with its schedule's name (None: the one schedule).
    Slots older than a claim's life cannot be judged."""
    if not ctx.settings.schedule_enabled:
        return []
    missed: list[tuple[datetime, str | None]] = []
    for schedule in schedules(ctx.settings):  # each scheduled policy has its own slots
        slot = last_slot(schedule.cron, schedule.timezone, now)
        if not CATCH_UP_WITHIN_S < (now - slot).total_seconds() < _TRIGGER_TTL_S:
            continue
        if not ctx.redis.exists(_trigger_key(ctx, schedule.key(slot))):
            missed.append((slot, schedule.policy))
    return missed


# --- Messages that are not well-formed Celery messages ----------------------------------------


def guarded_strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """Celery's default strategy behind :func:`worker.envelope.envelope_problem`: a bad trigger
    message is acknowledged and recorded as a rejected trigger."""
    settings = settings_of(app)

    def refused(name: str, message_id: str | None, problem: str) -> None:
        _reject(Context(settings), name, message_id, problem)

    return guarded(refused)(task, app, consumer, **kwargs)


def _connect_refusal_signals(settings: Settings) -> None:
    """Record messages Celery itself refuses (unknown task name, bad ETA, pickle) as rejected triggers."""

    def headers_of(message: Any) -> dict[str, Any]:
        headers = getattr(message, "headers", None)
        return headers if isinstance(headers, dict) else {}

    @signals.task_unknown.connect(weak=False, dispatch_uid="sfs-trigger-unknown")
    def _unknown(message: Any = None, name: Any = None, id: Any = None, **_: Any) -> None:
        _reject(Context(settings), str(name)[:200], str(id or ""), f"unknown task name {str(name)[:200]!r}")

    @signals.task_rejected.connect(weak=False, dispatch_uid="sfs-trigger-invalid")
    def _invalid(message: Any = None, exc: Any = None, **_: Any) -> None:
        headers = headers_of(message)
        name = str(headers.get("task") or "(none)")[:200]
        why = f"invalid task message: {exc}" if exc is not None else "not a Celery task message"
        _reject(Context(settings), name, str(headers.get("id") or ""), why)


def delete_tasks(ctx: Context, trigger: DeleteTasks) -> dict[str, Any]:
    """Plan an explicit list as a run (each task shown first, deleted only if finished)."""
    from scheduler.policy import policy_from_sources
    from scheduler.runs import start_run

    project_id = ctx.settings.project_id
    if project_id is None:
        raise SettingsError(["SFS_CLEANUP_PROJECT_ID is not set on the scheduler"])

    def start(run_id: str | None) -> dict[str, Any]:
        items = (TaskInfo(project_id, t.share_id, t.task_id) for t in trigger.tasks)
        policy = policy_from_sources(settings=ctx.settings, file=None, overrides={})
        plan = start_run(
            ctx,
            policy,
            items,
            source=Source(SourceKind.MESSAGE, "delete_tasks"),
            dry_run=trigger.dry_run,
            trigger=Trigger.MESSAGE,
            explicit=True,
            run_id=run_id,
            hold="anomaly",
            extra_meta={
                "requested_by": trigger.requested_by,
                "request_reason": trigger.reason,
                "idempotency_key": trigger.idempotency_key,
            },
        )
        return {"accepted": True, "run_id": plan.run_id, "selected": plan.selected}

    return _start_claimed(ctx, trigger.idempotency_key, start)


#: How far ahead of this worker's clock a named slot may be (clocks of beat and workers differ).
SLOT_CLOCK_SKEW_S = 300


class TriggerRefusedError(Exception):
    """A well-formed trigger that must not run; recorded as ``trigger_rejected``."""


def nightly_purge(ctx: Context, message: NightlyPurge, now: datetime) -> dict[str, Any]:
    """The run of one schedule slot; every later message for the slot is a no-op.

    A slot in the future is refused: it would claim that night's key ahead of time, and the
    night itself would then purge only what had ended by the time this message ran.
    """
    schedule = schedule_of(ctx.settings, message.policy)
    slot = schedule.slot(message.slot, now)
    if (slot - now).total_seconds() > SLOT_CLOCK_SKEW_S:
        raise TriggerRefusedError(f"slot {message.slot!r} is in the future (now {now.isoformat(timespec='seconds')})")
    slot_iso = slot.isoformat().replace("+00:00", "Z")
    trigger = StartPurge(idempotency_key=schedule.key(slot), policy_name=message.policy)
    meta = {"schedule_slot": slot_iso} | ({"schedule_policy": message.policy} if message.policy else {})
    return start_purge(ctx, trigger, started_by=Trigger.SCHEDULE, extra_meta=meta) | {"slot": slot_iso}


def handle_trigger(ctx: Context, name: str, message_id: str | None, args: Any, kwargs: Any) -> dict[str, Any]:
    """Validate a trigger's arguments and start it, or refuse it with the reason in the audit."""
    from scheduler.policy import PolicyError

    if args:
        return _reject(ctx, name, message_id, "positional arguments are not accepted; send kwargs")
    try:
        if name == START_PURGE:
            return start_purge(ctx, StartPurge.model_validate(kwargs), started_by=Trigger.MESSAGE)
        if name == DELETE_TASKS:
            return delete_tasks(ctx, DeleteTasks.model_validate(kwargs))
        if name == NIGHTLY:
            return nightly_purge(ctx, NightlyPurge.model_validate(kwargs), datetime.now(UTC))
    except ValidationError as exc:
        return _reject(ctx, name, message_id, explain_error(exc))
    except (PolicyError, SettingsError) as exc:
        return _reject(ctx, name, message_id, "; ".join(exc.lines))
    except TriggerRefusedError as exc:
        return _reject(ctx, name, message_id, str(exc))
    raise ValueError(f"not a trigger: {name}")


def register(app: Celery) -> None:
    settings = settings_of(app)
    _connect_refusal_signals(settings)
    # shared=False: closures over this app's settings stay with this app (see worker.tasks.register).
    options: dict[str, Any] = {
        "bind": True,
        "acks_late": True,
        "shared": False,
        "Strategy": "scheduler.service:guarded_strategy",
    }
    # Bounded by the broker's visibility timeout (the settings check it): a planner still running
    # when its message is delivered again would be joined by a second one.
    limit = settings.control_job_time_limit_s
    planning = {"time_limit": limit, "soft_time_limit": limit - min(60, max(1, limit // 10))}

    @app.task(name=START_PURGE, **options, **planning)
    def start_purge_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Start a purge by policy. Keyword arguments: see ``scheduler.triggers.StartPurge``."""
        return handle_trigger(Context(settings, celery=app), START_PURGE, self.request.id, args, kwargs)

    @app.task(name=DELETE_TASKS, **options, **planning)
    def delete_tasks_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Delete an explicit list of tasks. Keyword arguments: see ``scheduler.triggers.DeleteTasks``."""
        return handle_trigger(Context(settings, celery=app), DELETE_TASKS, self.request.id, args, kwargs)

    @app.task(name=NIGHTLY, **options, **planning)
    def nightly_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The scheduled purge: exactly one run per schedule slot, however often it is sent."""
        return handle_trigger(Context(settings, celery=app), NIGHTLY, self.request.id, args, kwargs)

    @app.task(name=RECONCILE, acks_late=False, ignore_result=True, shared=False)
    def reconcile_task() -> dict[str, int]:
        """Re-send jobs of active runs that the queue lost, and a lost nightly message; notify
        runs that need a human; archive ended runs, then give them their retention (every minute)."""
        from scheduler.archive.archiver import archive_pass
        from scheduler.dispatch import reconcile_all
        from scheduler.notify import notify_pending

        c = Context(settings, celery=app)
        try:
            done = reconcile_all(c.app, c.audit, settings)
            catch_up_nightly(c, datetime.now(UTC))
        finally:  # a run the reconciler trips on must not also silence the news of it, nor its archive
            try:
                archive_pass(c.audit, settings)
            finally:
                notify_pending(c, missed_slots=unclaimed_nightly_slots(c, datetime.now(UTC)))
        return done
