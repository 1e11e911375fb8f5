"""Sending one API call: a fleet slot, the write-ahead gate for a DELETE, then the request."""

from __future__ import annotations

import contextlib
import time

import redis
import structlog

from worker.api.answers import ApiAnswer, Verdict
from worker.api.auth import AuthError, AuthUnavailableError
from worker.ledger import SENDING, UNSENT, Attempt, Batch, Gate
from worker.models import TaskInfo
from worker.purge.base import JobBase
from worker.purge.state import (
    STALE_GATE_S,
    HeldError,
    LeftError,
    StopError,
    TaskHistory,
)
from worker.ratelimit import RateLimitCancelled, RateLimitWaitTooLong

log = structlog.get_logger(__name__)


class Sending(JobBase):
    def _call(self, batch: Batch, task_id: str, op: str) -> tuple[ApiAnswer, TaskInfo | None, Attempt]:
        """One API call under the fleet limiter; waits for its slot without spending a retry.

        A DELETE passes the write-ahead gate after its slot and before it leaves. The attempt
        is returned, not recorded: the caller records it, together with the final outcome when
        there is one (one Redis round trip for the common single-attempt case).
        """
        self._acquire()
        state = self.tasks.setdefault(task_id, TaskHistory())
        if op == "show":
            state.shows += 1
            n = state.shows
        else:
            state.deletes += 1
            n = state.deletes
            gate_at = self._pass_gate(batch, task_id, n)
        task: TaskInfo | None = None

        def pace() -> None:  # a request the auth flow sends again (after a 401) waits for its slot too
            self.limiter.acquire(self.stop)

        try:
            if op == "show":
                answer, task = self.client.show_task(batch.share_id, task_id, resend_pace=pace)
            else:
                if time.monotonic() - gate_at > STALE_GATE_S:
                    self._pass_gate_again(batch, task_id, n)
                answer = self.client.delete_task(batch.share_id, task_id, resend_pace=pace)
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
            self.rt.api_stats.observe("show" if op == "show" else "delete", answer, self.target)
        if answer.verdict is not Verdict.THROTTLED:  # a 429 is the limiter's own signal, not a result
            # No answer at all (timeout, reset) counts as a server error too: an outage often looks so.
            # Best effort: the circuit can miss a sample, but a DELETE's answer must not be lost
            # to a Redis hiccup here (it is recorded with the attempt).
            with contextlib.suppress(redis.RedisError):
                self.limiter.record_result(server_error=answer.verdict is Verdict.RETRYABLE and answer.status != 400)

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
                self.limiter.acquire(cancel=self.stop)
                break
            except RateLimitCancelled:
                self._halt()
            except redis.RedisError as exc:
                log.warning("rate limiter unreachable; not sending", error=str(exc)[:200])
                if time.monotonic() >= deadline:
                    raise LeftError from None
                self._wait_or_halt(pause)
                pause = min(2.0, pause * 2)
        if self.left.is_set():  # left while waiting for the slot: the slot goes unused
            raise LeftError

    def _pass_gate_again(self, batch: Batch, task_id: str, n: int) -> None:
        """The process paused after the gate: ask again, and mark the intent unsent if refused."""
        try:
            self._pass_gate(batch, task_id, n)
        except (StopError, LeftError, HeldError):
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
                raise LeftError
            try:
                gate = self.audit.gate(batch, task_id, intent, self.holder)
                break
            except redis.RedisError as exc:
                log.warning("write-ahead record refused by Redis; not sending", error=str(exc)[:200])
                if time.monotonic() >= deadline:
                    raise LeftError from None
                if self.stop.wait(pause):
                    self._halt()
                pause = min(2.0, pause * 2)
        if gate is Gate.GO:
            return time.monotonic()
        if gate is Gate.STOPPED:
            self.stop.set()
            raise StopError
        if gate is Gate.LEASE_LOST:
            self._leave("the gate found the batch's lease held by another job")
            raise LeftError
        raise HeldError("protected_share" if gate is Gate.PROTECTED_SHARE else "protected_task")
