"""Deciding one task: recheck, delete, retry by verdict, settle on one final outcome."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time

import redis
import structlog

from worker.api.answers import ApiAnswer, Verdict
from worker.ledger import Attempt, Batch, FinalOutcome, Outcome, RunMeta, RunStatus
from worker.models import TaskInfo
from worker.purge.sending import Sending
from worker.purge.state import (
    CONFIRMED,
    RECHECK_FAILED,
    HeldError,
    LeftError,
    StopError,
    TaskHistory,
)
from worker.ratelimit import RateLimitWaitTooLong

log = structlog.get_logger(__name__)


class Deciding(Sending):
    @functools.cached_property
    def _dry_run(self) -> bool:
        """Read once per job (the run's metadata is read when the job starts): parsing it for
        every task cost about 1.5% of a worker's CPU in the throughput profile."""
        return RunMeta.of(self.meta).dry_run

    def _one(self, batch: Batch, task_id: str) -> str:
        structlog.contextvars.bind_contextvars(run_id=self.run_id, batch=self.number, task=task_id)
        last: Attempt | None = None
        try:
            final, last = self._decide(batch, task_id)
        except StopError:
            final = FinalOutcome(Outcome.ABORTED, time.time(), reason=self._stop_reason())
        except HeldError as held:
            final = FinalOutcome(Outcome.SKIPPED, time.time(), reason=held.reason)
        except LeftError:
            return "left"
        self._final(batch, task_id, final, last)
        return final.outcome.value

    def _decide(self, batch: Batch, task_id: str) -> tuple[FinalOutcome, Attempt | None]:
        """The task's final outcome, and its last attempt (recorded together with it)."""
        if self.stop.is_set():
            self._halt()
        if self.share_missing is not None:
            failed = FinalOutcome(
                Outcome.FAILED, time.time(), code="share_missing", msg=self.share_missing, reason="share_missing"
            )
            return failed, None
        if self._dry_run:
            return FinalOutcome(Outcome.WOULD_DELETE, time.time()), None
        if self._rechecks(batch, task_id):
            if self.rules is None:
                why = self.rules_error or "the run's policy is not available"
                return FinalOutcome(Outcome.FAILED, time.time(), msg=why, reason=RECHECK_FAILED), None
            recheck = self._recheck(batch, task_id)
            if recheck is not None:
                return recheck
        return self._delete(batch, task_id)

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
                    self.limiter.throttled(answer.retry_after_s)
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
        state = self.tasks.setdefault(task_id, TaskHistory())
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
                    self.limiter.throttled(answer.retry_after_s)
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
        lost = [rid for rid in self.tasks.get(task_id, TaskHistory()).lost if answer.request_id != rid]
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
