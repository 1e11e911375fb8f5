"""The names of the scheduler's control jobs, all consumed from the ``sfs.control`` queue.

Other systems send the two message triggers by name (their arguments: :mod:`scheduler.triggers`);
they are the scheduler's alone, so they are defined here.

Beat sends the other two, and beat runs as ``celery -A worker beat``: its schedule is built by
:func:`worker.celery_app.create_app`, and the worker never imports the scheduler. So the
nightly purge's and the reconciler's names, the queue and the cron parser stay in
:mod:`worker.celery_app`; they are re-exported here so that the scheduler names every control
job from one module.
"""

from __future__ import annotations

from typing import Final

from worker.celery_app import cron_schedule
from worker.jobnames import CONTROL_QUEUE, NIGHTLY, RECONCILE

__all__ = ["CONTROL_QUEUE", "DELETE_TASKS", "NIGHTLY", "RECONCILE", "START_PURGE", "cron_schedule"]

START_PURGE: Final = "sfs.start_purge"
DELETE_TASKS: Final = "sfs.delete_tasks"
