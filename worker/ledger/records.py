"""The ledger's records: run and outcome states, attempts, final outcomes, plan batches.

These are the values the ledger stores (as short JSON, or as a plan entry) and hands back;
:mod:`worker.ledger.audit` reads and writes them in Redis.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from json.encoder import encode_basestring_ascii as _quote  # json's C string encoder
from typing import Any, Final

from worker.ledger._util import iso


def compact_json(fields: Iterable[tuple[str, Any]]) -> str:
    """``json.dumps(dict(fields), separators=(",", ":"))`` without the fields that are ``None`` or
    ``""``, for the flat records the ledger writes (text, numbers).

    Written out rather than through ``json.dumps``, which builds an encoder per call: each
    DELETE writes three records, and that was 5 % of a worker's CPU in the throughput profile.
    The text is the same (json's own C string encoder, ``repr`` of numbers); other values go
    through ``json.dumps`` (tested equal in ``tests/unit/test_records_json.py``).
    """
    parts = []
    for key, value in fields:
        if value is None or value == "":
            continue
        kind = type(value)
        if kind is str:
            text = _quote(value)
        elif kind is int or (kind is float and math.isfinite(value)):
            text = repr(value)
        else:
            text = json.dumps(value)
        parts.append(f'"{key}":{text}')
    return "{" + ",".join(parts) + "}"


class Outcome(StrEnum):
    """The one final outcome of a selected task."""

    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    FAILED = "failed"
    REJECTED = "rejected"  # bad input: never sent
    SKIPPED = "skipped"  # protected, or no longer eligible at delete time
    WOULD_DELETE = "would_delete"  # dry run
    ABORTED = "aborted"  # the run stopped first


class RunStatus(StrEnum):
    PLANNING = "planning"
    HELD = "held"  # planned and frozen; nothing is sent until it is approved (or it expires)
    RUNNING = "running"
    STOPPING = "stopping"  # cancel or failure threshold: the rest end as aborted
    FINISHED = "finished"
    ABORTED = "aborted"
    CANCELLED = "cancelled"


OVER: Final = frozenset({RunStatus.FINISHED, RunStatus.ABORTED, RunStatus.CANCELLED})
ACTIVE: Final = frozenset({RunStatus.RUNNING, RunStatus.STOPPING})
#: The verdict of a write-ahead intent: recorded before the DELETE leaves, completed by its answer.
SENDING: Final = "sending"
#: An intent whose DELETE was never sent after all (the run stopped, the lease was lost).
UNSENT: Final = "unsent"
# Before a task ID in a plan entry: show the task just before deleting it (a bare manifest
# entry, planned without the status and age rules). Task IDs never hold it (see worker.ids).
RECHECK_MARK: Final = "?"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One API call for one task. Short keys keep a million of them affordable in Redis."""

    n: int  # attempt number, from 1
    at: float  # epoch seconds
    status: int  # HTTP status, 0 when no answer came
    verdict: str
    request_id: str | None = None
    code: str | None = None
    msg: str | None = None
    latency_ms: float = 0.0
    worker: str = ""
    op: str = "delete"  # or "show", for the delete-time recheck

    @property
    def key(self) -> str:
        """The attempt's identity within its task (``d2``: the second DELETE): what makes a
        repeated write of the same attempt a no-op, and what an answer completes its intent by."""
        return f"{'s' if self.op == 'show' else 'd'}{self.n}"

    @property
    def marker(self) -> str:
        """How the attempt's line starts in the ledger (``to_json`` puts the key first)."""
        return f'{{"k":"{self.key}",'

    @property
    def pending(self) -> bool:
        """A write-ahead intent that no answer has completed: the DELETE may or may not have left."""
        return self.verdict == SENDING

    @property
    def sent_second(self) -> int | None:
        """The epoch second the request left in; ``None`` if none left: the run's rate record.

        Records are written in batches after the answer, so the time of the write would put a
        request in a later second than the one it left in, and a run at the limit would seem to
        go over it. An attempt is stamped when its answer came; its latency goes back to the send.
        """
        if self.verdict == UNSENT:
            return None
        return int(self.at - self.latency_ms / 1000)

    def to_json(self) -> str:
        return compact_json(
            (
                ("k", self.key),
                ("op", None if self.op == "delete" else self.op),
                ("n", self.n),
                ("t", round(self.at, 3)),
                ("s", self.status),
                ("v", self.verdict),
                ("r", self.request_id),
                ("c", self.code),
                ("m", self.msg),
                ("l", round(self.latency_ms, 1)),
                ("w", self.worker),
            )
        )

    @classmethod
    def from_json(cls, text: str) -> Attempt:
        d = json.loads(text)
        return cls(
            n=int(d.get("n", 0)),
            at=float(d.get("t", 0)),
            status=int(d.get("s", 0)),
            verdict=str(d.get("v", "")),
            request_id=d.get("r"),
            code=d.get("c"),
            msg=d.get("m"),
            latency_ms=float(d.get("l", 0)),
            worker=str(d.get("w", "")),
            op=str(d.get("op", "delete")),
        )


@dataclass(frozen=True, slots=True)
class FinalOutcome:
    """The final outcome of a task, with what an auditor needs to prove it."""

    outcome: Outcome
    at: float
    attempts: int = 0
    status: int | None = None
    code: str | None = None
    msg: str | None = None
    request_id: str | None = None
    reason: str | None = None

    def to_json(self) -> str:
        return compact_json(
            (
                ("o", self.outcome.value),
                ("t", round(self.at, 3)),
                ("a", self.attempts),
                ("s", self.status),
                ("c", self.code),
                ("m", self.msg),
                ("r", self.request_id),
                ("why", self.reason),
            )
        )

    @classmethod
    def from_json(cls, text: str) -> FinalOutcome:
        d = json.loads(text)
        return cls(
            outcome=Outcome(d["o"]),
            at=float(d.get("t", 0)),
            attempts=int(d.get("a", 0)),
            status=d.get("s"),
            code=d.get("c"),
            msg=d.get("m"),
            request_id=d.get("r"),
            reason=d.get("why"),
        )


#: Between a batch's target and its share in a plan entry (``target@share|...``). Neither a
#: target name (a slug) nor a share ID (a plain ID) can hold it.
TARGET_MARK: Final = "@"


@dataclass(frozen=True, slots=True)
class Batch:
    run_id: str
    number: int
    share_id: str
    task_ids: tuple[str, ...]
    recheck: frozenset[str] = frozenset()  # tasks to show just before their delete
    target: str | None = None  # the targets file's target; None: the settings' one project

    @classmethod
    def parse(cls, run_id: str, number: int, value: str) -> Batch:
        """A plan entry ``[target@]share|t1,?t2,...``; ``?`` marks a task to show before deleting it.

        An entry without a target (every plan of a deployment without a targets file, and every
        plan stored before targets existed) is the settings' one project.
        """
        head, _, tasks = value.partition("|")
        target, mark, share_id = head.rpartition(TARGET_MARK)
        at = target if mark else None
        ids = [t for t in tasks.split(",") if t]
        if RECHECK_MARK not in tasks:
            return cls(run_id, number, share_id, tuple(ids), target=at)
        recheck = frozenset(t[1:] for t in ids if t.startswith(RECHECK_MARK))
        return cls(run_id, number, share_id, tuple(t.removeprefix(RECHECK_MARK) for t in ids), recheck, at)

    def encode(self) -> str:
        """The plan entry :meth:`parse` reads back into this batch."""
        return encode_batch(self.share_id, self.task_ids, self.recheck, target=self.target)


def encode_batch(
    share_id: str, task_ids: Iterable[str], recheck: Collection[str] = (), *, target: str | None = None
) -> str:
    """A plan entry ``[target@]share|t1,?t2,...``: the one encoding :meth:`Batch.parse` reads.

    Task IDs in ``recheck`` get :data:`RECHECK_MARK`, so the worker shows them just before
    deleting them. Without a target the entry is exactly what it was before targets existed.
    """
    head = share_id if target is None else f"{target}{TARGET_MARK}{share_id}"
    if not recheck:
        return f"{head}|{','.join(task_ids)}"
    return f"{head}|{','.join(RECHECK_MARK + t if t in recheck else t for t in task_ids)}"


class Gate(IntEnum):
    """The write-ahead gate's answer (``lua/gate.lua``)."""

    GO = 1  # the intent is recorded: send
    STOPPED = -1  # the run is not running any more
    LEASE_LOST = -2  # another job holds the batch now
    PROTECTED_SHARE = -3
    PROTECTED_TASK = -4


@dataclass(frozen=True, slots=True)
class RecordResult:
    written: bool  # this call wrote the final outcome
    duplicate: bool  # the task already had one
    run_over: bool  # this outcome ended the run


@dataclass(slots=True)
class TaskRecord:
    """Everything the audit knows of one task in one run (for ``audit task`` and exports)."""

    run_id: str
    batch: int
    share_id: str
    task_id: str
    final: FinalOutcome | None
    attempts: list[Attempt] = field(default_factory=list)

    def as_row(self, project_id: str) -> dict[str, Any]:
        last = self.attempts[-1] if self.attempts else None
        final = self.final
        return {
            "run_id": self.run_id,
            "project_id": project_id,
            "share_id": self.share_id,
            "task_id": self.task_id,
            "outcome": final.outcome.value if final else "pending",
            "reason": (final.reason if final else None) or "",
            "attempts": len(self.attempts),
            "last_http_status": last.status if last else "",
            "error_code": (final.code if final and final.code else (last.code if last else None)) or "",
            "error_message": (final.msg if final and final.msg else (last.msg if last else None)) or "",
            "request_ids": [a.request_id for a in self.attempts if a.request_id],
            "finished_at": iso(final.at) if final else "",
        }


def new_run_id(now: datetime | None = None) -> str:
    """Sortable, readable and unique: ``20261129-023000-4f9c1a``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
