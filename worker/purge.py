"""One deletion job: the tasks of one plan batch (one share), deleted concurrently.

The job claims its batch with a lease, skips tasks that already have an outcome (so a job
delivered twice never sends a second DELETE for a finished task), re-reads the protection
lists, and then deletes each remaining task under the fleet-wide limiter, retrying by the
verdict of each answer. Every attempt and the one final outcome go to the audit.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog

from worker.answers import ApiAnswer, Verdict
from worker.audit import ACTIVE, Attempt, Batch, FinalOutcome, Outcome, RecordBuffer, RunStatus
from worker.auth import AuthError, AuthUnavailableError
from worker.models import FINISHED_STATUSES, TaskInfo
from worker.ratelimit import RateLimitWaitTooLong
from worker.runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass
class JobResult:
    run_id: str
    batch: int
    state: str  # done | busy | missing | over
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "batch": self.batch, "state": self.state, "outcomes": dict(self.outcomes)}


# How often a job looks at its run's status (one HGET). A stop (failure threshold, cancel) is
# noticed this fast; at 1 s, a fleet at 200 requests/s sent 150 more DELETEs after the threshold.
_WATCH_S = 0.25

_BUMP = {Verdict.THROTTLED.value: "throttled", Verdict.RETRYABLE.value: "retries"}


class _StopError(Exception):
    """The run is stopping: the task ends as aborted."""


class _LeftError(Exception):
    """The job left its batch (its time limit, an error): the task keeps no outcome, for the next job."""


# After leaving its batch, how long a job waits for requests already sent, so their answers are
# recorded. The soft time limit comes 20 s before the hard one.
_LEAVE_WAIT_S = 10.0


class BatchJob:
    def __init__(self, rt: Runtime, run_id: str, number: int, holder: str) -> None:
        self.rt = rt
        self.audit = rt.audit
        self.settings = rt.settings
        self.run_id = run_id
        self.number = number
        self.holder = holder
        self.stop = threading.Event()
        # Set when the job leaves its batch with tasks still queued (soft time limit, an error):
        # the pool's threads outlive the job, and must not go on deleting after the lease is given
        # back, while the reconciler may hand the batch to another job.
        self.left = threading.Event()
        self.meta: dict[str, str] = {}
        self.share_missing: str | None = None

    # --- the job ---------------------------------------------------------------------------
    def run(self) -> JobResult:
        result = JobResult(self.run_id, self.number, "done")
        self.meta = self.audit.run(self.run_id)
        status = self.meta.get("status")
        batch = self.audit.batch(self.run_id, self.number)
        if batch is None or status is None:
            result.state = "missing"
            return result
        if RunStatus(status) not in ACTIVE:
            result.state = "over"
            return result
        if RunStatus(status) is RunStatus.STOPPING:
            self.stop.set()  # a job of a stopping run only records its tasks as aborted
        if not self._take_lease():
            result.state = "busy"  # another delivery is working on it; the reconciler watches both
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
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    self.audit.release_lease(self.run_id, self.number, self.holder)
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
        """Renew the lease and watch the run's status until the job ends."""
        renew_every = max(1.0, self.settings.lease_s / 3)
        last_renew = time.monotonic()
        while not self.stop.wait(_WATCH_S):
            try:
                if self._stopping():
                    self.stop.set()
                    return
                if time.monotonic() - last_renew >= renew_every:
                    self.audit.renew_lease(self.run_id, self.number, self.holder, self.settings.lease_s)
                    last_renew = time.monotonic()
            except (redis.ConnectionError, redis.TimeoutError):
                # Redis restarting: keep going, or the lease would lapse for good once it is back
                # and the reconciler would send a second job for a batch this one still works on.
                continue

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
        # Protection lists are read live, not copied into the plan: a hold placed after
        # planning still wins. The run's own policy protections are in its metadata.
        protected = self.audit.protected(batch.share_id, pending)
        policy_tasks = set(self.meta.get("protected_task_ids", "").split(",")) - {""}
        policy_shares = set(self.meta.get("protected_share_ids", "").split(",")) - {""}
        for task_id in pending:
            if batch.share_id in policy_shares:
                protected.setdefault(task_id, "protected_share")
            elif task_id in policy_tasks:
                protected.setdefault(task_id, "protected_task")
        # Build the client, the limiter and the thread pool before the first slot is taken: a
        # slot reserved and then spent building them leaves late and bunches with on-time
        # requests (the rate benchmark saw a start-up burst of about 0.2 s x rate).
        _ = (self.rt.client, self.rt.limiter, self.rt.pool)
        todo: list[str] = []
        for task_id in pending:
            if task_id in protected:
                self._final(batch, task_id, FinalOutcome(Outcome.SKIPPED, time.time(), reason=protected[task_id]))
                result.outcomes[Outcome.SKIPPED] += 1
            else:
                todo.append(task_id)
        futures = [self.rt.pool.submit(self._one, batch, task_id) for task_id in todo]
        try:
            wait(futures)
        except BaseException:
            self.left.set()
            self.stop.set()  # wakes threads sleeping out a backoff
            for future in futures:
                future.cancel()
            wait(futures, timeout=_LEAVE_WAIT_S)
            raise
        for future in futures:
            exc = future.exception()
            if exc is not None:
                raise exc
            result.outcomes[future.result()] += 1

    def _give_up(self, batch: Batch, pending: list[str], lost: int, result: JobResult) -> None:
        """Fail what is left of a batch whose jobs keep dying on it, instead of looping for ever."""
        reason = f"job_lost: the batch's job was lost {lost} times in a row with no progress (worker killed?)"
        log.error("batch given up", lost=lost, pending=len(pending))
        self.audit.event("batch_given_up", run_id=self.run_id, batch=self.number, lost=lost, pending=len(pending))
        for task_id in pending:
            self._final(batch, task_id, FinalOutcome(Outcome.FAILED, time.time(), reason=reason))
        result.outcomes[Outcome.FAILED] += len(pending)

    # --- one task ---------------------------------------------------------------------------
    def _one(self, batch: Batch, task_id: str) -> str:
        structlog.contextvars.bind_contextvars(run_id=self.run_id, batch=self.number)
        last: Attempt | None = None
        try:
            final, last = self._decide(batch, task_id)
        except _StopError:
            final = FinalOutcome(Outcome.ABORTED, time.time(), reason=self._stop_reason())
        except _LeftError:
            return "left"
        self._final(batch, task_id, final, last)
        return final.outcome.value

    def _stopping(self) -> bool:
        """The run is no longer running (stopping, or already stopped): end tasks as aborted."""
        return self.audit.status(self.run_id) is not RunStatus.RUNNING

    def _halt(self) -> None:
        """Called once ``stop`` is set: raise if this task must not go on."""
        if self.left.is_set():
            raise _LeftError
        if self._stopping():
            raise _StopError

    def _stop_reason(self) -> str:
        return self.audit.run(self.run_id).get("reason", "") or "the run was stopped"

    def _decide(self, batch: Batch, task_id: str) -> tuple[FinalOutcome, Attempt | None]:
        """The task's final outcome, and its last attempt (recorded together with it)."""
        if self.stop.is_set():
            self._halt()
        if self.share_missing is not None:
            failed = FinalOutcome(
                Outcome.FAILED, time.time(), code="share_missing", msg=self.share_missing, reason="share_missing"
            )
            return failed, None
        if self.meta.get("dry_run") == "1":
            return FinalOutcome(Outcome.WOULD_DELETE, time.time()), None
        if self.settings.recheck_status or self.meta.get("recheck") == "1" or task_id in batch.recheck:
            recheck = self._recheck(batch, task_id)
            if recheck is not None:
                return recheck
        return self._delete(batch, task_id)

    def _call(self, batch: Batch, task_id: str, op: str, attempt_no: int) -> tuple[ApiAnswer, TaskInfo | None, Attempt]:
        """One API call under the fleet limiter; waits for its slot without spending a retry.

        The attempt is returned, not recorded: the caller records it, together with the final
        outcome when there is one (one Redis round trip for the common single-attempt case).
        """
        if self.stop.is_set():
            self._halt()
        self.rt.limiter.acquire()
        if self.left.is_set():  # left while waiting for the slot: the slot goes unused
            raise _LeftError
        task: TaskInfo | None = None
        try:
            if op == "show":
                answer, task = self.rt.client.show_task(batch.share_id, task_id)
            else:
                answer = self.rt.client.delete_task(batch.share_id, task_id)
        except AuthUnavailableError as exc:  # IAM unreachable or busy: worth another try later
            answer = ApiAnswer(op.upper(), "", 0, Verdict.RETRYABLE, error_code="auth.unavailable", error_msg=str(exc))
        except AuthError as exc:  # the login itself was refused: no retry can fix it
            answer = ApiAnswer(op.upper(), "", 0, Verdict.FATAL, error_code="auth", error_msg=str(exc))
        if answer.verdict is not Verdict.THROTTLED:  # a 429 is the limiter's own signal, not a result
            # No answer at all (timeout, reset) counts as a server error too: an outage often looks so.
            # Best effort: the circuit can miss a sample, but a DELETE's answer must not be lost
            # to a Redis hiccup here (it is recorded with the attempt below).
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                self.rt.limiter.record_result(server_error=answer.verdict is Verdict.RETRYABLE and answer.status != 400)
        attempt = Attempt(
            n=attempt_no,
            at=time.time(),
            status=answer.status,
            verdict=answer.verdict.value,
            request_id=answer.request_id,
            code=answer.error_code,
            msg=answer.error_msg,
            latency_ms=answer.latency_ms,
            worker=self.holder,
            op=op,
        )
        return answer, task, attempt

    def _note(self, batch: Batch, task_id: str, attempt: Attempt) -> None:
        """Record an attempt that did not settle the task (it will be retried)."""
        self.records.add(batch, task_id, attempt=attempt, bump=_BUMP.get(attempt.verdict, ""))

    def _recheck(self, batch: Batch, task_id: str) -> tuple[FinalOutcome, Attempt] | None:
        """Show the task just before deleting it: skip it if it is no longer finished.

        When the show call itself fails, the delete goes ahead and its own answer decides.
        """
        try:
            answer, task, attempt = self._call(batch, task_id, "show", 0)
        except RateLimitWaitTooLong:
            return None
        if answer.verdict is Verdict.GONE:
            return self._final_from(Outcome.ALREADY_GONE, 0, answer), attempt
        if answer.ok and task is not None and not is_finished_status(task.status):
            return FinalOutcome(Outcome.SKIPPED, time.time(), reason=f"status_changed:{task.status}"), attempt
        self._note(batch, task_id, attempt)
        return None

    def _delete(self, batch: Batch, task_id: str) -> tuple[FinalOutcome, Attempt | None]:
        policy = self.rt.retry
        attempt = retries = throttled = 0
        last: ApiAnswer | None = None  # the last answer, for a failure that comes without one
        while True:
            attempt += 1
            try:
                answer, _, record = self._call(batch, task_id, "delete", attempt)
            except RateLimitWaitTooLong as exc:
                throttled += 1
                if throttled > policy.max_throttled:
                    reason = "no request slot within the wait bound, too often (rate limit, or the API down)"
                    return self._failed(attempt - 1, last, reason), None
                attempt -= 1
                # Nothing was reserved: the slot, or the end of the circuit's cool-down while the
                # API is down, is further away than the wait bound. Sleep the bound before asking
                # again; asking at once would spend the whole budget in milliseconds and fail
                # every waiting task as soon as a cool-down outgrew RATE_WAIT_MAX_S.
                if self.stop.wait(min(exc.needed, self.settings.rate_wait_max_s)):
                    self._halt()
                continue
            last = answer
            verdict = answer.verdict
            if verdict is Verdict.THROTTLED:
                self.rt.limiter.throttled(answer.retry_after_s)
                throttled += 1
                if throttled > policy.max_throttled:
                    return self._failed(attempt, answer, "throttled too many times"), record
                self._note(batch, task_id, record)
                continue
            if verdict is Verdict.RETRYABLE:
                retries += 1
                if retries > policy.max_retries:
                    return self._failed(attempt, answer, "retries exhausted"), record
                self._note(batch, task_id, record)
                if self.stop.wait(policy.delay(retries)):
                    self._halt()
                continue
            return self._settle(batch, attempt, answer), record

    def _settle(self, batch: Batch, attempt: int, answer: ApiAnswer) -> FinalOutcome:
        """The final outcome of an answer that no retry can change."""
        verdict = answer.verdict
        if verdict is Verdict.OK:
            return self._final_from(Outcome.DELETED, attempt, answer)
        if verdict is Verdict.GONE:
            return self._final_from(Outcome.ALREADY_GONE, attempt, answer)
        if verdict is Verdict.SHARE_MISSING:
            self.share_missing = answer.describe()
            self.audit.mark_share_missing(self.run_id, batch.share_id, self.share_missing)
            return self._failed(attempt, answer, "share_missing")
        if verdict in (Verdict.FATAL, Verdict.AUTH_RENEW):
            # Credentials or configuration that no retry can fix (the auth layer has already
            # renewed a token once): stop the whole run with one line that says what to fix,
            # instead of failing every task the same way.
            # A refused IAM login has no HTTP answer of the API to show: its own message says it all.
            reason = f"stopped: {answer.error_msg}" if answer.error_code == "auth" else f"stopped: {answer.describe()}"
            if self.audit.request_stop(self.run_id, RunStatus.ABORTED, reason):
                log.error("run stopped", reason=reason)
            self.stop.set()
            return self._failed(attempt, answer, "fatal")
        return self._failed(attempt, answer, "permanent")

    @staticmethod
    def _final_from(outcome: Outcome, attempts: int, answer: ApiAnswer, reason: str | None = None) -> FinalOutcome:
        return FinalOutcome(
            outcome,
            time.time(),
            attempts,
            answer.status,
            answer.error_code,
            answer.error_msg,
            answer.request_id,
            reason,
        )

    def _failed(self, attempts: int, answer: ApiAnswer | None, reason: str) -> FinalOutcome:
        if answer is None:
            return FinalOutcome(Outcome.FAILED, time.time(), attempts, reason=reason)
        return self._final_from(Outcome.FAILED, attempts, answer, reason)

    def _final(self, batch: Batch, task_id: str, final: FinalOutcome, attempt: Attempt | None = None) -> None:
        bump = _BUMP.get(attempt.verdict, "") if attempt else ""
        self.records.add(batch, task_id, attempt=attempt, final=final, bump=bump)


def is_finished_status(status: str | None) -> bool:
    return status in {s.value for s in FINISHED_STATUSES}
