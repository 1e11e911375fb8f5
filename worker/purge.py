"""One deletion job: the tasks of one plan batch (one share), deleted concurrently.

The job claims its batch with a lease, skips tasks that already have an outcome (so a job
delivered twice never sends a second DELETE for a finished task), re-reads the protection
lists, and then deletes each remaining task under the fleet-wide limiter, retrying by the
verdict of each answer. Every attempt and the one final outcome go to the audit.

The rules at the edges, each of which a test holds:

- **Stop means stop.** A thread waiting for its rate-limit slot wakes when the run stops or
  the job leaves its batch, and sends nothing.
- **Write-ahead.** No DELETE leaves before :meth:`Audit.gate` has recorded, in one atomic
  Redis step, that it is about to: and the gate writes only while the run is running, the
  lease is this job's and no live hold names the task or its share. A Redis that cannot take
  that write means the DELETE is not sent. A gate passed longer ago than ``_STALE_GATE_S`` (the
  process was paused) is passed again before sending.
- **Checks fail closed.** A task that must be shown before its DELETE (bare manifest entries,
  explicit lists, replays, ``RECHECK_STATUS``) is deleted only after a show answered 200 with a
  task that passes the run's whole policy; a show that keeps failing ends the task ``failed``
  with reason ``recheck_failed``.
- **Our delete, our record.** A task found gone after an earlier DELETE of ours got no usable
  answer (no answer, a 5xx, an intent never completed) ends ``deleted``, confirmed by the later
  answer, with every request ID kept in its attempts.
- **One holder.** A job that cannot renew its lease stops sending at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import Counter
from concurrent.futures import wait
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis
import structlog

from worker.answers import ApiAnswer, Verdict
from worker.audit import (
    ACTIVE,
    SENDING,
    UNSENT,
    Attempt,
    Batch,
    FinalOutcome,
    Gate,
    Outcome,
    RecordBuffer,
    RunStatus,
)
from worker.auth import AuthError, AuthUnavailableError
from worker.eligibility import Eligibility, EligibilityError
from worker.models import FINISHED_STATUSES, TaskInfo
from worker.ratelimit import RateLimitCancelled, RateLimitWaitTooLong
from worker.runtime import Runtime

log = structlog.get_logger(__name__)


class JobState(StrEnum):
    DONE = "done"
    BUSY = "busy"  # another delivery holds the batch
    MISSING = "missing"  # no such run or batch
    OVER = "over"  # the run has ended
    LEFT = "left"  # the lease was lost: the rest is for the job that holds it now


@dataclass
class JobResult:
    run_id: str
    batch: int
    state: JobState
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "batch": self.batch,
            "state": self.state.value,
            "outcomes": dict(self.outcomes),
        }


# How often a job looks at its run's status (one HGET). A stop (failure threshold, cancel) wakes
# the threads waiting for a slot this fast; the gate refuses a DELETE of a stopped run at once.
_WATCH_S = 0.25

# A gate passed longer ago than this (the process was paused between the gate and the send, by
# SIGSTOP or a VM freeze) is passed again: the lease may have gone to another job meanwhile.
_STALE_GATE_S = 0.5

_BUMP = {Verdict.THROTTLED.value: "throttled", Verdict.RETRYABLE.value: "retries"}

RECHECK_FAILED = "recheck_failed"
CONFIRMED = "confirmed_by_later_answer"


class _StopError(Exception):
    """The run is stopping: the task ends as aborted."""


class _LeftError(Exception):
    """The job left its batch (lease lost, time limit, Redis away): the task keeps no outcome."""


class _HeldError(Exception):
    """A live hold names the task or its share: it ends skipped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# After leaving its batch, how long a job waits for requests already sent, so their answers are
# recorded. The soft time limit comes 20 s before the hard one.
_LEAVE_WAIT_S = 10.0


@dataclass
class _TaskState:
    """What one task's attempts so far say: the next attempt numbers, and DELETEs of ours whose
    answer was lost (a later "already gone" then confirms our own delete)."""

    shows: int = 0
    deletes: int = 0
    lost: list[str] = field(default_factory=list)  # request IDs, or "" where none came

    @classmethod
    def from_history(cls, attempts: list[Attempt]) -> _TaskState:
        state = cls()
        for a in attempts:
            if a.op == "show":
                state.shows = max(state.shows, a.n)
            else:
                state.deletes = max(state.deletes, a.n)
                state.note(a)
        return state

    def note(self, attempt: Attempt) -> None:
        if attempt.op == "delete" and _may_have_deleted(attempt):
            self.lost.append(attempt.request_id or "")


def _may_have_deleted(attempt: Attempt) -> bool:
    """A DELETE that may have reached the API without its answer reaching us."""
    if attempt.pending:
        return True  # recorded as leaving, never completed: the worker died, or Redis did
    if attempt.verdict != Verdict.RETRYABLE.value:
        return False
    code = attempt.code or ""
    if code.startswith(("auth.", "transport.Connect")):
        return False  # failed before the request left: no login, or no connection
    return attempt.status == 0 or attempt.status >= 500


class BatchJob:
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
        self.tasks: dict[str, _TaskState] = {}
        self.rules: Eligibility | None = None
        self.rules_error: str | None = None

    # --- the job ---------------------------------------------------------------------------
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
        while not self.stop.wait(_WATCH_S):
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

    def _leave(self, why: str) -> None:
        if not self.left.is_set():
            log.warning("job leaves its batch", reason=why)
        self.left.set()
        self.stop.set()

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
        _ = (self.rt.client, self.rt.limiter, self.rt.pool)
        todo: list[str] = []
        for task_id in pending:
            if task_id in protected:
                self._final(batch, task_id, FinalOutcome(Outcome.SKIPPED, time.time(), reason=protected[task_id]))
                result.outcomes[Outcome.SKIPPED] += 1
            else:
                todo.append(task_id)
        history = self.audit.attempt_history(self.run_id, self.number, todo)
        self.tasks = {t: _TaskState.from_history(history.get(t, [])) for t in todo}
        futures = [self.rt.pool.submit(self._one, batch, task_id) for task_id in todo]
        try:
            wait(futures)
        except BaseException:
            self._leave("the job was interrupted")
            for future in futures:
                future.cancel()
            wait(futures, timeout=_LEAVE_WAIT_S)
            raise
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
            result.outcomes[future.result()] += 1

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

    def _rechecks_any(self, batch: Batch) -> bool:
        return self.settings.recheck_status or self.meta.get("recheck") == "1" or bool(batch.recheck)

    def _rechecks(self, batch: Batch, task_id: str) -> bool:
        return self.settings.recheck_status or self.meta.get("recheck") == "1" or task_id in batch.recheck

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
        structlog.contextvars.bind_contextvars(run_id=self.run_id, batch=self.number, task=task_id)
        last: Attempt | None = None
        try:
            final, last = self._decide(batch, task_id)
        except _StopError:
            final = FinalOutcome(Outcome.ABORTED, time.time(), reason=self._stop_reason())
        except _HeldError as held:
            final = FinalOutcome(Outcome.SKIPPED, time.time(), reason=held.reason)
        except _LeftError:
            return "left"
        self._final(batch, task_id, final, last)
        return final.outcome.value

    def _stopping(self) -> bool:
        """The run is no longer running (stopping, or already stopped): end tasks as aborted."""
        return self.audit.status(self.run_id) is not RunStatus.RUNNING

    def _halt(self) -> None:
        """Called once ``stop`` is set: raise why this task must not go on (fail closed)."""
        if self.left.is_set():
            raise _LeftError
        try:
            stopping = self._stopping()
        except redis.RedisError:
            raise _LeftError from None  # cannot tell: leave the task to the next delivery
        if stopping:
            raise _StopError
        raise _LeftError  # stop set for a reason that is not the run's: the job is ending

    def _stop_reason(self) -> str:
        with contextlib.suppress(redis.RedisError):
            return self.audit.run(self.run_id).get("reason", "") or "the run was stopped"
        return "the run was stopped"

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
        if self._rechecks(batch, task_id):
            if self.rules is None:
                why = self.rules_error or "the run's policy is not available"
                return FinalOutcome(Outcome.FAILED, time.time(), msg=why, reason=RECHECK_FAILED), None
            recheck = self._recheck(batch, task_id)
            if recheck is not None:
                return recheck
        return self._delete(batch, task_id)

    def _call(self, batch: Batch, task_id: str, op: str) -> tuple[ApiAnswer, TaskInfo | None, Attempt]:
        """One API call under the fleet limiter; waits for its slot without spending a retry.

        A DELETE passes the write-ahead gate after its slot and before it leaves. The attempt
        is returned, not recorded: the caller records it, together with the final outcome when
        there is one (one Redis round trip for the common single-attempt case).
        """
        self._acquire()
        state = self.tasks.setdefault(task_id, _TaskState())
        if op == "show":
            state.shows += 1
            n = state.shows
        else:
            state.deletes += 1
            n = state.deletes
            gate_at = self._pass_gate(batch, task_id, n)
        task: TaskInfo | None = None

        def pace() -> None:  # a request the auth flow sends again (after a 401) waits for its slot too
            self.rt.limiter.acquire(self.stop)

        try:
            if op == "show":
                answer, task = self.rt.client.show_task(batch.share_id, task_id, resend_pace=pace)
            else:
                if time.monotonic() - gate_at > _STALE_GATE_S:
                    self._pass_gate_again(batch, task_id, n)
                answer = self.rt.client.delete_task(batch.share_id, task_id, resend_pace=pace)
        except (RateLimitCancelled, RateLimitWaitTooLong) as exc:
            # The first send was refused (401) and the resend never left: nothing was deleted.
            if op == "delete":
                self._note(batch, task_id, self._unsent(n))
            if isinstance(exc, RateLimitCancelled):
                self._halt()
            raise
        except AuthUnavailableError as exc:  # IAM unreachable or busy: worth another try later
            answer = ApiAnswer(op.upper(), "", 0, Verdict.RETRYABLE, error_code="auth.unavailable", error_msg=str(exc))
        except AuthError as exc:  # the login itself was refused: no retry can fix it
            answer = ApiAnswer(op.upper(), "", 0, Verdict.FATAL, error_code="auth", error_msg=str(exc))
        self._observed(op, answer)
        attempt = Attempt(
            n=n,
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
        if op == "delete" and answer.verdict is not Verdict.THROTTLED:
            state.note(attempt)
        return answer, task, attempt

    def _observed(self, op: str, answer: ApiAnswer) -> None:
        """Tell the fleet's metrics and the circuit of an answer."""
        if not (answer.error_code or "").startswith("auth"):  # made up here: nothing was sent
            self.rt.api_stats.observe("show" if op == "show" else "delete", answer)
        if answer.verdict is not Verdict.THROTTLED:  # a 429 is the limiter's own signal, not a result
            # No answer at all (timeout, reset) counts as a server error too: an outage often looks so.
            # Best effort: the circuit can miss a sample, but a DELETE's answer must not be lost
            # to a Redis hiccup here (it is recorded with the attempt).
            with contextlib.suppress(redis.RedisError):
                self.rt.limiter.record_result(server_error=answer.verdict is Verdict.RETRYABLE and answer.status != 400)

    def _acquire(self) -> None:
        """Wait for a fleet slot; a stop or leave wakes the wait, and the task goes no further.

        The limiter lives in Redis: while Redis refuses (down, out of memory, read-only) nothing
        is sent, and after ``RecordBuffer.retry_s`` the task is left to a later delivery.
        """
        deadline = time.monotonic() + self.records.retry_s
        pause = 0.1
        while True:
            if self.stop.is_set():
                self._halt()
            try:
                self.rt.limiter.acquire(cancel=self.stop)
                break
            except RateLimitCancelled:
                self._halt()
            except redis.RedisError as exc:
                log.warning("rate limiter unreachable; not sending", error=str(exc)[:200])
                if time.monotonic() >= deadline:
                    raise _LeftError from None
                self._wait_or_halt(pause)
                pause = min(2.0, pause * 2)
        if self.left.is_set():  # left while waiting for the slot: the slot goes unused
            raise _LeftError

    def _pass_gate_again(self, batch: Batch, task_id: str, n: int) -> None:
        """The process paused after the gate: ask again, and mark the intent unsent if refused."""
        try:
            self._pass_gate(batch, task_id, n)
        except (_StopError, _LeftError, _HeldError):
            self._note(batch, task_id, self._unsent(n))
            raise

    def _unsent(self, n: int) -> Attempt:
        """Completes an intent whose DELETE did not leave after all (or was refused unread)."""
        return Attempt(n=n, at=time.time(), status=0, verdict=UNSENT, worker=self.holder, op="delete")

    def _pass_gate(self, batch: Batch, task_id: str, n: int) -> float:
        """Record the DELETE as about to leave, or raise why it must not (see ``Audit.gate``).

        While Redis cannot take the write (down, out of memory, read-only after a failover) the
        DELETE waits, and after ``RecordBuffer.retry_s`` the task is left to a later delivery:
        nothing is sent that the audit does not know about.
        """
        intent = Attempt(n=n, at=time.time(), status=0, verdict=SENDING, worker=self.holder, op="delete")
        deadline = time.monotonic() + self.records.retry_s
        pause = 0.1
        while True:
            if self.left.is_set():
                raise _LeftError
            try:
                gate = self.audit.gate(batch, task_id, intent, self.holder)
                break
            except redis.RedisError as exc:
                log.warning("write-ahead record refused by Redis; not sending", error=str(exc)[:200])
                if time.monotonic() >= deadline:
                    raise _LeftError from None
                if self.stop.wait(pause):
                    self._halt()
                pause = min(2.0, pause * 2)
        if gate is Gate.GO:
            return time.monotonic()
        if gate is Gate.STOPPED:
            self.stop.set()
            raise _StopError
        if gate is Gate.LEASE_LOST:
            self._leave("the gate found the batch's lease held by another job")
            raise _LeftError
        raise _HeldError("protected_share" if gate is Gate.PROTECTED_SHARE else "protected_task")

    def _note(self, batch: Batch, task_id: str, attempt: Attempt) -> None:
        """Record an attempt that did not settle the task (it will be retried)."""
        self.records.add(batch, task_id, attempt=attempt, bump=_BUMP.get(attempt.verdict, ""))

    def _wait_or_halt(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            self._halt()

    def _recheck(self, batch: Batch, task_id: str) -> tuple[FinalOutcome, Attempt | None] | None:
        """Show the task just before deleting it; ``None`` means it passed and may be deleted.

        Fails closed: only a 200 whose task passes the run's whole policy lets the DELETE go. A
        show that fails is retried like a delete; one that never succeeds ends ``failed``,
        reason ``recheck_failed``.
        """
        policy = self.rt.retry
        retries = throttled = 0
        last: ApiAnswer | None = None
        while True:
            try:
                answer, task, attempt = self._call(batch, task_id, "show")
            except RateLimitWaitTooLong as exc:
                throttled += 1
                if throttled > policy.max_throttled:
                    return self._failed(0, last, RECHECK_FAILED), None
                self._wait_or_halt(min(exc.needed, self.settings.rate_wait_max_s))
                continue
            last = answer
            verdict = answer.verdict
            if verdict is Verdict.GONE:
                return self._gone(task_id, answer), attempt
            if verdict is Verdict.OK and task is not None:
                refused = self._refused(task)
                if refused is None:
                    self._note(batch, task_id, attempt)
                    return None
                return FinalOutcome(Outcome.SKIPPED, time.time(), reason=refused), attempt
            if verdict is Verdict.OK:  # 200 with a body that says nothing readable of the task
                attempt = dataclasses.replace(attempt, verdict=Verdict.RETRYABLE.value, code="unreadable_body")
                verdict = Verdict.RETRYABLE
            if verdict is Verdict.THROTTLED:
                with contextlib.suppress(redis.RedisError):  # a lost 429 signal only slows less
                    self.rt.limiter.throttled(answer.retry_after_s)
                throttled += 1
                if throttled > policy.max_throttled:
                    return self._failed(0, answer, RECHECK_FAILED), attempt
                self._note(batch, task_id, attempt)
                continue
            if verdict is Verdict.RETRYABLE:
                retries += 1
                if retries > policy.max_retries:
                    return self._failed(0, answer, RECHECK_FAILED), attempt
                self._note(batch, task_id, attempt)
                self._wait_or_halt(policy.delay(retries))
                continue
            if verdict in (Verdict.SHARE_MISSING, Verdict.FATAL, Verdict.AUTH_RENEW):
                return self._settle(batch, task_id, 0, answer), attempt
            return self._failed(0, answer, RECHECK_FAILED), attempt

    def _refused(self, task: TaskInfo) -> str | None:
        """Why a shown task fails the run's policy now (``status_changed:DOING``, ``too_young``)."""
        assert self.rules is not None
        why = self.rules.refuse(task)
        if why is not None and why.startswith("status:") and task.status:
            return f"status_changed:{task.status}"
        return why

    def _delete(self, batch: Batch, task_id: str) -> tuple[FinalOutcome, Attempt | None]:
        policy = self.rt.retry
        retries = throttled = 0
        last: ApiAnswer | None = None  # the last answer, for a failure that comes without one
        state = self.tasks.setdefault(task_id, _TaskState())
        while True:
            try:
                answer, _, record = self._call(batch, task_id, "delete")
            except RateLimitWaitTooLong as exc:
                throttled += 1
                if throttled > policy.max_throttled:
                    reason = "no request slot within the wait bound, too often (rate limit, or the API down)"
                    return self._failed(state.deletes, last, reason), None
                # Nothing was reserved: the slot, or the end of the circuit's cool-down while the
                # API is down, is further away than the wait bound. Sleep the bound before asking
                # again; asking at once would spend the whole budget in milliseconds and fail
                # every waiting task as soon as a cool-down outgrew RATE_WAIT_MAX_S.
                self._wait_or_halt(min(exc.needed, self.settings.rate_wait_max_s))
                continue
            last = answer
            verdict = answer.verdict
            if verdict is Verdict.THROTTLED:
                with contextlib.suppress(redis.RedisError):  # a lost 429 signal only slows less
                    self.rt.limiter.throttled(answer.retry_after_s)
                throttled += 1
                if throttled > policy.max_throttled:
                    return self._failed(record.n, answer, "throttled too many times"), record
                self._note(batch, task_id, record)
                continue
            if verdict is Verdict.RETRYABLE:
                retries += 1
                if retries > policy.max_retries:
                    return self._failed(record.n, answer, "retries exhausted"), record
                self._note(batch, task_id, record)
                self._wait_or_halt(policy.delay(retries))
                continue
            return self._settle(batch, task_id, record.n, answer), record

    def _gone(self, task_id: str, answer: ApiAnswer, attempts: int = 0) -> FinalOutcome:
        """A task the API says is gone: ours if an earlier DELETE of ours lost its answer."""
        lost = [rid for rid in self.tasks.get(task_id, _TaskState()).lost if answer.request_id != rid]
        if lost:
            earlier = ", ".join(rid or "no answer" for rid in lost)
            reason = f"{CONFIRMED}: an earlier DELETE of ours had no usable answer ({earlier}); it is gone now"
            return self._final_from(Outcome.DELETED, attempts, answer, reason)
        return self._final_from(Outcome.ALREADY_GONE, attempts, answer)

    def _settle(self, batch: Batch, task_id: str, attempt: int, answer: ApiAnswer) -> FinalOutcome:
        """The final outcome of an answer that no retry can change."""
        verdict = answer.verdict
        if verdict is Verdict.OK:
            return self._final_from(Outcome.DELETED, attempt, answer)
        if verdict is Verdict.GONE:
            return self._gone(task_id, answer, attempt)
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
