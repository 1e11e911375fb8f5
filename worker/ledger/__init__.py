"""The audit and the run ledger in Redis: one final outcome per selected task, every attempt.

A run is a frozen plan plus a ledger. The plan (batches of task IDs of one share) is written
before the first DELETE; each task's final outcome is written once (``HSETNX``) by a Lua
script that bumps the run's counters in the same step, so a duplicate delivery can never count
twice and, once a run is over, ``selected`` equals the sum of its outcome counters. The key
layout is in :mod:`worker.ledger.keys`.
"""

from worker.ledger.audit import Audit
from worker.ledger.buffer import RecordBuffer
from worker.ledger.keys import Keys
from worker.ledger.records import (
    ACTIVE,
    OVER,
    RECHECK_MARK,
    SENDING,
    UNSENT,
    Attempt,
    Batch,
    FinalOutcome,
    Gate,
    Outcome,
    RecordResult,
    RunStatus,
    TaskRecord,
    encode_batch,
    new_run_id,
)
from worker.ledger.runmeta import RunMeta, Source, SourceKind, Trigger

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
    "Keys",
    "Outcome",
    "RecordBuffer",
    "RecordResult",
    "RunMeta",
    "RunStatus",
    "Source",
    "SourceKind",
    "TaskRecord",
    "Trigger",
    "encode_batch",
    "new_run_id",
]
