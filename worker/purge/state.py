"""What a deletion job knows and decides with: its result, per-task history, and why a task stops."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worker.api.answers import Verdict
from worker.ledger import Attempt

# How often a job looks at its run's status (one HGET). A stop (failure threshold, cancel) wakes
# the threads waiting for a slot this fast; the gate refuses a DELETE of a stopped run at once.
WATCH_S = 0.25

# A gate passed longer ago than this (the process was paused between the gate and the send, by
# SIGSTOP or a VM freeze) is passed again: the lease may have gone to another job meanwhile.
STALE_GATE_S = 0.5

BUMP = {Verdict.THROTTLED.value: "throttled", Verdict.RETRYABLE.value: "retries"}

RECHECK_FAILED = "recheck_failed"
CONFIRMED = "confirmed_by_later_answer"

# After leaving its batch, how long a job waits for requests already sent, so their answers are
# recorded. The soft time limit comes 20 s before the hard one.
LEAVE_WAIT_S = 10.0


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


class StopError(Exception):
    """The run is stopping: the task ends as aborted."""


class LeftError(Exception):
    """The job left its batch (lease lost, time limit, Redis away): the task keeps no outcome."""


class HeldError(Exception):
    """A live hold names the task or its share: it ends skipped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class TaskHistory:
    """What one task's attempts so far say: the next attempt numbers, and DELETEs of ours whose
    answer was lost (a later "already gone" then confirms our own delete)."""

    shows: int = 0
    deletes: int = 0
    lost: list[str] = field(default_factory=list)  # request IDs, or "" where none came

    @classmethod
    def from_history(cls, attempts: list[Attempt]) -> TaskHistory:
        state = cls()
        for a in attempts:
            if a.op == "show":
                state.shows = max(state.shows, a.n)
            else:
                state.deletes = max(state.deletes, a.n)
                state.note(a)
        return state

    def note(self, attempt: Attempt) -> None:
        if attempt.op == "delete" and may_have_deleted(attempt):
            self.lost.append(attempt.request_id or "")


def may_have_deleted(attempt: Attempt) -> bool:
    """A DELETE that may have reached the API without its answer reaching us."""
    if attempt.pending:
        return True  # recorded as leaving, never completed: the worker died, or Redis did
    if attempt.verdict != Verdict.RETRYABLE.value:
        return False
    code = attempt.code or ""
    if code.startswith(("auth.", "transport.Connect")):
        return False  # failed before the request left: no login, or no connection
    return attempt.status == 0 or attempt.status >= 500
