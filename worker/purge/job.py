"""One deletion job: the tasks of one plan batch (one share), deleted concurrently."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import wait

import redis
import structlog

from worker.eligibility import Eligibility, EligibilityError
from worker.errors import UsageError
from worker.ledger import ACTIVE, Batch, FinalOutcome, Outcome, RecordBuffer, RunStatus
from worker.models import FINISHED_STATUSES
from worker.purge.deciding import Deciding
from worker.purge.state import (
    LEAVE_WAIT_S,
    WATCH_S,
    JobResult,
    JobState,
    TaskHistory,
)

log = structlog.get_logger(__name__)


class BatchJob(Deciding):
    """Claims one plan batch with a lease and settles each of its tasks (see :mod:`worker.purge`)."""

    def run(self) -> JobResult:
        result = JobResult(self.run_id, self.number, JobState.DONE)
        self.meta = self.audit.run(self.run_id)
        status = self.meta.get("status")
        batch = self.audit.batch(self.run_id, self.number)
        if batch is None or status is None:
            result.state = JobState.MISSING
            return result
        if RunStatus(status) not in ACTIVE:
            result.state = JobState.OVER
            return result
        if RunStatus(status) is RunStatus.STOPPING:
            self.stop.set()  # a job of a stopping run only records its tasks as aborted
        if not self._take_lease():
            result.state = JobState.BUSY  # another delivery is working on it; the reconciler watches both
            return result
        keeper = threading.Thread(target=self._keep_lease, name="sfs-lease", daemon=True)
        keeper.start()
        s = self.settings
        self.records = RecordBuffer(
            self.audit,
            flush_s=s.audit_flush_ms / 1000,
            failure_ratio=s.failure_threshold_ratio,
            failure_min_attempts=s.failure_threshold_min_attempts,
        )
        try:
            self._process(batch, result)
        finally:
            try:
                self.records.close()  # every outcome is in Redis before the lease is let go
            finally:
                self.stop.set()
                keeper.join(timeout=5)
                # Best effort: an unreleased lease expires by itself after lease_s.
                with contextlib.suppress(redis.RedisError):
                    self.audit.release_lease(self.run_id, self.number, self.holder)
        if self.left.is_set():
            result.state = JobState.LEFT
        if self.records.duplicates:
            log.info("outcomes already recorded by another delivery", count=self.records.duplicates)
        return result

    def _take_lease(self) -> bool:
        """Claim the batch, waiting out a lease that nobody renews any more.

        A job whose pool child died (SIGKILL, OOM, or a SIGTERM sent to the worker's whole
        process group) leaves its lease behind, and Celery hands its message straight back
        (``task_reject_on_worker_lost``). Giving up at once as "busy" would ack that delivery and
        strand the batch until the reconciler (``reconcile_after_s`` once the queue is empty).
        A live holder renews its lease every ``lease_s / 3``, so waiting one lease period tells
        a dead holder (its lease expires: take it) from a live one (still held: busy).
        """
        lease_s = self.settings.lease_s
        deadline = time.monotonic() + lease_s + 1
        while not self.audit.take_lease(self.run_id, self.number, self.holder, lease_s):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
        return True

    def _keep_lease(self) -> None:
        """Renew the lease and watch the run's status until the job ends.

        A renewal refused (the lease expired or another job holds it: a pause longer than the
        lease, a failover that lost the key) makes the job leave its batch at once. So does a
        Redis that stays away until the lease may have expired: this job can no longer prove it
        holds the batch. The gate refuses a DELETE without the lease anyway; leaving also wakes
        the threads that wait for a slot or a backoff.
        """
        lease_s = self.settings.lease_s
        renew_every = max(1.0, lease_s / 3)
        last_renew = last_ok = time.monotonic()
        while not self.stop.wait(WATCH_S):
            try:
                if self._stopping():
                    self.stop.set()
                    return
                if time.monotonic() - last_renew >= renew_every:
                    last_renew = time.monotonic()
                    if not self.audit.renew_lease(self.run_id, self.number, self.holder, lease_s):
                        self._leave("the batch's lease was lost (expired or taken by another job)")
                        return
                    last_ok = last_renew
            except redis.RedisError:
                if time.monotonic() - last_ok >= lease_s * 2 / 3:
                    self._leave("the lease could not be renewed for two thirds of its time")
                    return

    def _process(self, batch: Batch, result: JobResult) -> None:
        done = self.audit.finished_tasks(self.run_id, self.number)
        pending = [t for t in batch.task_ids if t not in done]
        if not pending:
            return
        deliveries = self.audit.note_delivery(self.run_id, self.number, len(pending))
        if deliveries > self.settings.max_job_deliveries:
            self._give_up(batch, pending, deliveries - 1, result)
            return
        self.share_missing = self.audit.share_missing(self.run_id, batch.share_id)
        protected = self._held(batch, pending)
        if self._rechecks_any(batch):
            try:
                self.rules = Eligibility.from_run(self.meta)
            except EligibilityError as exc:
                self.rules_error = str(exc)
        # Build the client, the limiter and the thread pool before the first slot is taken: a
        # slot reserved and then spent building them leaves late and bunches with on-time
        # requests (the rate benchmark saw a start-up burst of about 0.2 s x rate).
        self._prepare(batch)
        todo: list[str] = []
        for task_id in pending:
            if task_id in protected:
                self._final(batch, task_id, FinalOutcome(Outcome.SKIPPED, time.time(), reason=protected[task_id]))
                result.outcomes[Outcome.SKIPPED] += 1
            else:
                todo.append(task_id)
        history = self.audit.attempt_history(self.run_id, self.number, todo)
        self.tasks = {t: TaskHistory.from_history(history.get(t, [])) for t in todo}
        # One loop per pool thread taking the batch's tasks in order, rather than one pool job
        # per task: a future, its condition and a wake-up per task cost about 50 us of CPU per
        # deletion in the throughput profile. A task that raises does not stop its loop (the
        # others' tasks still run, as they did as pool jobs); the first error is raised at the end.
        queue = iter(todo)
        queue_lock = threading.Lock()
        errors: list[BaseException] = []

        def drain() -> None:
            while True:
                with queue_lock:
                    task_id = next(queue, None)
                if task_id is None:
                    return
                try:
                    outcome = self._one(batch, task_id)
                except Exception as exc:  # raised once every task is settled
                    with queue_lock:
                        errors.append(exc)
                    continue
                with queue_lock:
                    result.outcomes[outcome] += 1

        loops = min(len(todo), self.settings.batch_concurrency)
        futures = [self.rt.pool.submit(drain) for _ in range(loops)]
        try:
            wait(futures)
        except BaseException:
            self._leave("the job was interrupted")
            for future in futures:
                future.cancel()
            wait(futures, timeout=LEAVE_WAIT_S)
            raise
        for future in futures:
            future.result()
        if errors:
            raise errors[0]

    def _prepare(self, batch: Batch) -> None:
        """Build the batch's target's client and limiter, and the pool (see :meth:`_process`)."""
        self.target = batch.target
        try:
            _ = (self.client, self.limiter, self.rt.pool)
        except UsageError as exc:
            if batch.target is None:
                raise
            # A target this process cannot use (not in its targets file, a credential missing
            # here): no retry can fix it. Stop the run with one line, as refused credentials do.
            reason = f"stopped: {exc}"
            if self.audit.request_stop(self.run_id, RunStatus.ABORTED, reason[:500]):
                log.error("run stopped", reason=reason)
            self.stop.set()

    def _held(self, batch: Batch, pending: list[str]) -> dict[str, str]:
        """Tasks held from the start: task ID -> reason.

        Protection lists are read live, not copied into the plan: a hold placed after planning
        still wins (and the gate reads them again just before each DELETE). The run's own policy
        protections are in its metadata.
        """
        protected = self.audit.protected(batch.share_id, pending)
        policy_tasks = set(self.meta.get("protected_task_ids", "").split(",")) - {""}
        policy_shares = set(self.meta.get("protected_share_ids", "").split(",")) - {""}
        for task_id in pending:
            if batch.share_id in policy_shares:
                protected.setdefault(task_id, "protected_share")
            elif task_id in policy_tasks:
                protected.setdefault(task_id, "protected_task")
        return protected

    def _give_up(self, batch: Batch, pending: list[str], lost: int, result: JobResult) -> None:
        """Fail what is left of a batch whose jobs keep dying on it, instead of looping for ever."""
        reason = f"job_lost: the batch's job was lost {lost} times in a row with no progress (worker killed?)"
        log.error("batch given up", lost=lost, pending=len(pending))
        self.audit.event("batch_given_up", run_id=self.run_id, batch=self.number, lost=lost, pending=len(pending))
        for task_id in pending:
            self._final(batch, task_id, FinalOutcome(Outcome.FAILED, time.time(), reason=reason))
        result.outcomes[Outcome.FAILED] += len(pending)


def is_finished_status(status: str | None) -> bool:
    return status in {s.value for s in FINISHED_STATUSES}
