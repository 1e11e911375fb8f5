"""The beat schedule: the reconciler every minute and, when enabled, the nightly purge.

``celery -A scheduler beat`` sends these; the worker's app has no schedule, so ``worker/``
names nothing of the scheduler's. Beat logs once at start whether the nightly purge is on, and
what it will run, so that "is the schedule on?" is answered by the first lines of its log.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Celery, signals

from scheduler.cron import cron_schedule
from scheduler.jobs import CONTROL_QUEUE, NIGHTLY, RECONCILE
from scheduler.policies import schedules
from worker.settings import Settings

log = structlog.get_logger(__name__)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for these settings."""
    schedule: dict[str, dict[str, Any]] = {
        "reconcile": {"task": RECONCILE, "schedule": 60.0, "options": {"queue": CONTROL_QUEUE, "expires": 55}},
    }
    if settings.schedule_enabled:
        for s in schedules(settings):
            schedule[s.entry] = {
                "task": NIGHTLY,
                "schedule": cron_schedule(s.cron, s.timezone),
                "kwargs": {} if s.policy is None else {"policy": s.policy},
                "options": {"queue": CONTROL_QUEUE},
            }
    return schedule


def describe(settings: Settings) -> dict[str, Any]:
    """What beat will run, as one log line's fields."""
    if not settings.schedule_enabled:
        return {
            "nightly_purge": "off",
            "hint": "set SFS_CLEANUP_SCHEDULE_ENABLED=true to purge on SFS_CLEANUP_SCHEDULE_CRON",
        }
    named = [s for s in schedules(settings) if s.policy is not None]
    if named:
        return {
            "nightly_purge": "on",
            "policies": {s.policy: f"{s.cron} ({s.timezone})" for s in named},
            "policies_file": settings.policies_file,
        }
    return {
        "nightly_purge": "on",
        "cron": settings.schedule_cron,
        "timezone": settings.schedule_timezone,
        "older_than": settings.older_than,
        "statuses": ",".join(settings.statuses),
        "types": ",".join(settings.types) or "all",
        "shares": ",".join(settings.share_ids) or f"every available share named {settings.share_name_pattern}",
        "max_deletions": settings.max_deletions,
    }


def install(app: Celery, settings: Settings) -> None:
    """Give ``app`` the schedule, and log it once when beat starts."""
    app.conf.beat_schedule = beat_schedule(settings)

    @signals.beat_init.connect(weak=False, dispatch_uid="sfs-beat-schedule")
    def _announce(**_: Any) -> None:
        log.info("beat schedule", reconcile="every 60 s", **describe(settings))
