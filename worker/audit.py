"""Temporary: re-exports worker.ledger; removed at the end of the restructuring."""

from worker.ledger import (
    ACTIVE,
    OVER,
    RECHECK_MARK,
    SENDING,
    UNSENT,
    Attempt,
    Audit,
    Batch,
    FinalOutcome,
    Gate,
    Outcome,
    RecordBuffer,
    RecordResult,
    RunStatus,
    TaskRecord,
    new_run_id,
)

__all__ = [
    "ACTIVE",
    "OVER",
    "RECHECK_MARK",
    "SENDING",
    "UNSENT",
    "Attempt",
    "Audit",
    "Batch",
    "FinalOutcome",
    "Gate",
    "Outcome",
    "RecordBuffer",
    "RecordResult",
    "RunStatus",
    "TaskRecord",
    "new_run_id",
]
