"""The state a deletion job shares with its threads, and how a thread learns it must stop."""

from __future__ import annotations

import contextlib
import threading

import redis
import structlog

from worker.api.client import SfsTurboClient
from worker.eligibility import Eligibility
from worker.ledger import Attempt, Batch, FinalOutcome, RecordBuffer, RunStatus
from worker.purge.state import (
    BUMP,
    LeftError,
    StopError,
    TaskHistory,
)
from worker.ratelimit import FleetLimiter
from worker.runtime import Runtime

log = structlog.get_logger(__name__)


class JobBase:
    """A job's identity, its runtime and the signals its threads watch (``stop``, ``left``)."""

    records: RecordBuffer  # built when the job has its lease

    def __init__(self, rt: Runtime, run_id: str, number: int, holder: str) -> None:
        self.rt = rt
        self.audit = rt.audit
        self.settings = rt.settings
        self.run_id = run_id
        self.number = number
        self.holder = holder
        self.stop = threading.Event()
        # Set when the job leaves its batch with tasks still queued (lease lost, soft time limit,
        # an error): the pool's threads outlive the job, and must not go on deleting once another
        # job may hold the batch.
        self.left = threading.Event()
        self.meta: dict[str, str] = {}
        self.share_missing: str | None = None
        self.tasks: dict[str, TaskHistory] = {}
        self.rules: Eligibility | None = None
        self.rules_error: str | None = None
        self.target: str | None = None  # the batch's target (a targets file); None: the one project

    @property
    def client(self) -> SfsTurboClient:
        """The API client of this job's target (built once per process and target)."""
        return self.rt.client_for(self.target)

    @property
    def limiter(self) -> FleetLimiter:
        """The fleet limiter (bucket) of this job's target."""
        return self.rt.limiter_for(self.target)

    def _leave(self, why: str) -> None:
        if not self.left.is_set():
            log.warning("job leaves its batch", reason=why)
        self.left.set()
        self.stop.set()

    def _stopping(self) -> bool:
        """The run is no longer running (stopping, or already stopped): end tasks as aborted."""
        return self.audit.status(self.run_id) is not RunStatus.RUNNING

    def _halt(self) -> None:
        """Called once ``stop`` is set: raise why this task must not go on (fail closed)."""
        if self.left.is_set():
            raise LeftError
        try:
            stopping = self._stopping()
        except redis.RedisError:
            raise LeftError from None  # cannot tell: leave the task to the next delivery
        if stopping:
            raise StopError
        raise LeftError  # stop set for a reason that is not the run's: the job is ending

    def _stop_reason(self) -> str:
        with contextlib.suppress(redis.RedisError):
            return self.audit.run(self.run_id).get("reason", "") or "the run was stopped"
        return "the run was stopped"

    def _rechecks_any(self, batch: Batch) -> bool:
        return self.settings.recheck_status or self.meta.get("recheck") == "1" or bool(batch.recheck)

    def _rechecks(self, batch: Batch, task_id: str) -> bool:
        return self.settings.recheck_status or self.meta.get("recheck") == "1" or task_id in batch.recheck

    def _note(self, batch: Batch, task_id: str, attempt: Attempt) -> None:
        """Record an attempt that did not settle the task (it will be retried)."""
        self.records.add(batch, task_id, attempt=attempt, bump=BUMP.get(attempt.verdict, ""))

    def _wait_or_halt(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            self._halt()

    def _final(self, batch: Batch, task_id: str, final: FinalOutcome, attempt: Attempt | None = None) -> None:
        bump = BUMP.get(attempt.verdict, "") if attempt else ""
        self.records.add(batch, task_id, attempt=attempt, final=final, bump=bump)
