"""The names of the scheduler's control jobs, all consumed from the ``sfs.control`` queue.

Other systems send the two message triggers by name (their arguments: :mod:`scheduler.triggers`);
beat sends the other two (:mod:`scheduler.schedule`). They are the scheduler's alone: the worker
consumes only ``sfs.purge_batch`` on ``sfs.delete``.
"""

from __future__ import annotations

from typing import Final

from worker.jobnames import CONTROL_QUEUE

__all__ = ["CONTROL_QUEUE", "DELETE_TASKS", "NIGHTLY", "RECONCILE", "START_PURGE"]

START_PURGE: Final = "sfs.start_purge"  # message trigger: a purge by policy
DELETE_TASKS: Final = "sfs.delete_tasks"  # message trigger: an explicit list of tasks
NIGHTLY: Final = "sfs.nightly_purge"  # beat, on the schedule
RECONCILE: Final = "sfs.reconcile"  # beat, every minute
