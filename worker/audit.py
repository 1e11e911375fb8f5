"""The audit and the run ledger in Redis: one final outcome per selected task, every attempt.

A run is a frozen plan plus a ledger. The plan (batches of task IDs of one share) is written
before the first DELETE; each task's final outcome is written once (``HSETNX``) by a Lua
script that bumps the run's counters in the same step, so a duplicate delivery can never count
twice and, once a run is over, ``selected`` equals the sum of its outcome counters. The key
layout is in :mod:`worker.keys`.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from importlib import resources
from typing import Any, Final

import redis
import structlog

from worker.keys import Keys


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

    def to_json(self) -> str:
        data = {
            "k": self.key,
            "op": None if self.op == "delete" else self.op,
            "n": self.n,
            "t": round(self.at, 3),
            "s": self.status,
            "v": self.verdict,
            "r": self.request_id,
            "c": self.code,
            "m": self.msg,
            "l": round(self.latency_ms, 1),
            "w": self.worker,
        }
        return json.dumps({k: v for k, v in data.items() if v not in (None, "")}, separators=(",", ":"))

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
        data = {
            "o": self.outcome.value,
            "t": round(self.at, 3),
            "a": self.attempts,
            "s": self.status,
            "c": self.code,
            "m": self.msg,
            "r": self.request_id,
            "why": self.reason,
        }
        return json.dumps({k: v for k, v in data.items() if v not in (None, "")}, separators=(",", ":"))

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


@dataclass(frozen=True, slots=True)
class Batch:
    run_id: str
    number: int
    share_id: str
    task_ids: tuple[str, ...]
    recheck: frozenset[str] = frozenset()  # tasks to show just before their delete

    @classmethod
    def parse(cls, run_id: str, number: int, value: str) -> Batch:
        """A plan entry ``share|t1,?t2,...``; ``?`` marks a task to show before deleting it."""
        share_id, _, tasks = value.partition("|")
        ids = [t for t in tasks.split(",") if t]
        if RECHECK_MARK not in tasks:
            return cls(run_id, number, share_id, tuple(ids))
        recheck = frozenset(t[1:] for t in ids if t.startswith(RECHECK_MARK))
        return cls(run_id, number, share_id, tuple(t.removeprefix(RECHECK_MARK) for t in ids), recheck)


class Gate(IntEnum):
    """The write-ahead gate's answer (``ledger_lua/gate.lua``)."""

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
            "finished_at": _iso(final.at) if final else "",
        }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_run_id(now: datetime | None = None) -> str:
    """Sortable, readable and unique: ``20261129-023000-4f9c1a``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _script(name: str) -> str:
    return (resources.files("worker") / "ledger_lua" / name).read_text()


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Audit:
    """Ledger and audit operations on one Redis. Safe to share between threads."""

    def __init__(self, client: redis.Redis, *, prefix: str = "sfs", retention_s: int = 90 * 86400) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.retention_s = retention_s
        self._record = client.register_script(_script("record.lua"))
        self._freeze = client.register_script(_script("freeze.lua"))
        self._stop = client.register_script(_script("stop.lua"))
        self._abandon_stale = client.register_script(_script("abandon_stale.lua"))
        self._gate = client.register_script(_script("gate.lua"))
        self._add_rejected = client.register_script(_script("rejected.lua"))

    # --- runs ------------------------------------------------------------------------------
    def create_run(self, run_id: str, meta: Mapping[str, Any]) -> None:
        now = time.time()
        fields = {k: _field(v) for k, v in meta.items() if v is not None}
        fields.update({"run_id": run_id, "status": RunStatus.PLANNING.value, "created_at": str(now)})
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.run(run_id), mapping=fields)
        pipe.zadd(self.keys.runs, {run_id: now})
        # The reconciler walks this index, so an old run still active is never out of its sight.
        pipe.zadd(self.keys.active_runs, {run_id: now})
        pipe.execute()
        self.event("run_created", run_id=run_id, trigger=str(meta.get("trigger", "")))

    def add_batches(self, run_id: str, batches: Iterable[tuple[int, str, list[str]]]) -> int:
        """Write plan batches (number, share, task IDs) in one round trip; returns tasks added."""
        pipe = self.redis.pipeline(transaction=False)
        now = str(int(time.time()))
        count = 0
        for number, share_id, task_ids in batches:
            pipe.hset(self.keys.plan(run_id), str(number), f"{share_id}|{','.join(task_ids)}")
            pipe.sadd(self.keys.open_batches(run_id), str(number))
            pipe.hset(self.keys.touch(run_id), str(number), now)
            count += len(task_ids)
        pipe.execute()
        return count

    def add_rejected(self, run_id: str, items: Iterable[Mapping[str, Any]]) -> int:
        """Record refused input: each one is a selected entry whose final outcome is ``rejected``."""
        rows = [json.dumps(dict(item), separators=(",", ":"), ensure_ascii=True) for item in items]
        if not rows:
            return 0
        # One token per call, claimed in the same script as the writes: redis-py sends a command
        # again when its reply was lost, and the second run must not store the lines twice.
        keys = [self.keys.rejected(run_id), self.keys.run(run_id), self.keys.rejected_done(run_id)]
        self._add_rejected(keys=keys, args=[secrets.token_hex(8), *rows])
        return len(rows)

    def freeze(self, run_id: str, selected: int, **meta: Any) -> RunStatus:
        """Fix the run's totals (planned tasks plus rejected entries) and start it.

        A run cancelled (or stopped) while it was planning is frozen too, so that its totals
        are known, and ended at once: each planned task is recorded ``aborted`` (nothing was
        sent), which keeps ``selected`` equal to the sum of the outcomes.
        """
        if meta:
            self.redis.hset(self.keys.run(run_id), mapping={k: _field(v) for k, v in meta.items()})
        raw_status, changed = self._freeze(keys=[self.keys.run(run_id)], args=[selected, RunStatus.RUNNING.value])
        status = RunStatus(_decode(raw_status))
        if status is RunStatus.STOPPING and int(changed):
            self._abort_unsent(run_id)
            status = self.status(run_id) or RunStatus.ABORTED
        if status in OVER and int(changed):
            self.on_run_over(run_id)
        return status

    def _abort_unsent(self, run_id: str) -> None:
        """Record ``aborted`` for every planned task of a run stopped before its first job."""
        why = self.run(run_id).get("reason") or "stopped"
        final = FinalOutcome(Outcome.ABORTED, time.time(), reason=f"{why} (while planning: never sent)"[:500])
        pipe = self.redis.pipeline(transaction=False)
        queued = 0
        for batch in self.iter_batches(run_id):
            for task_id in batch.task_ids:
                self.record(batch, task_id, final=final, pipe=pipe)
                queued += 1
            if queued >= 5000:
                pipe.execute()
                queued = 0
        pipe.execute()

    def planning_beat(self, run_id: str) -> bool:
        """The planner is alive and making progress (see :meth:`abandon_stale_planning`).

        Returns whether the run is still planning: ``False`` once it was cancelled or aborted,
        so the planner stops reading an inventory nobody will act on.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.run(run_id), "plan_beat", int(time.time()))
        pipe.hget(self.keys.run(run_id), "status")
        _, status = pipe.execute()
        return status is not None and _decode(status) == RunStatus.PLANNING.value

    def abandon_stale_planning(self, run_id: str, stale_after_s: float) -> bool:
        """Abort a run that is still planning with no planner heartbeat for ``stale_after_s``.

        A control worker killed mid-plan leaves its run ``planning`` for ever otherwise. Atomic
        with :meth:`freeze`: a planner that was only slow finds its run aborted and sends nothing.
        """
        reason = f"planning stopped: no progress for {stale_after_s:g} s (the planner was killed or lost)"
        aborted = bool(self._abandon_stale(keys=[self.keys.run(run_id)], args=[stale_after_s, reason]))
        if aborted:
            self.event("run_abandoned", run_id=run_id, reason=reason)
            structlog.get_logger(__name__).warning("run abandoned: its planner stopped", run_id=run_id)
            key = self.run(run_id).get("idempotency_key")
            if key:  # a trigger sent again may start the run afresh
                self.release_trigger(key, run_id)
            self.on_run_over(run_id)
        return aborted

    def release_trigger(self, idempotency_key: str, run_id: str) -> bool:
        """Give a trigger's idempotency key back if ``run_id`` still holds it (compare-and-delete)."""
        return bool(
            self.redis.eval(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                1,
                self.keys.trigger(idempotency_key),
                run_id,
            )
        )

    def abandon(self, run_id: str, reason: str) -> None:
        """End a run that failed while planning (no job was sent): aborted, with the reason.

        Its trigger's idempotency key is given back: nothing was deleted, so the nightly
        catch-up (or the trigger sent again) must be free to start the run afresh.
        """
        key = self.keys.run(run_id)
        finals = int(self.redis.hget(key, "finals") or 0)
        trigger_key = self.redis.hget(key, "idempotency_key")
        if trigger_key:
            self.release_trigger(_decode(trigger_key), run_id)
        self.redis.hset(
            key,
            mapping={
                "status": RunStatus.ABORTED.value,
                "reason": reason,
                "selected": finals,
                "finished_at": time.time(),
            },
        )
        self.on_run_over(run_id)

    def request_stop(self, run_id: str, final_status: RunStatus, reason: str) -> bool:
        """Stop a run: tasks without an outcome end as ``aborted``. False if it was not running."""
        changed = bool(self._stop(keys=[self.keys.run(run_id)], args=[final_status.value, reason]))
        if changed:
            self.event("run_stopping", run_id=run_id, reason=reason)
        return changed

    def run(self, run_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(self.keys.run(run_id))
        return {_decode(k): _decode(v) for k, v in raw.items()}

    def status(self, run_id: str) -> RunStatus | None:
        value = self.redis.hget(self.keys.run(run_id), "status")
        return RunStatus(_decode(value)) if value is not None else None

    def list_runs(self, limit: int = 20) -> list[dict[str, str]]:
        ids = [_decode(r) for r in self.redis.zrevrange(self.keys.runs, 0, limit - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(self.keys.run(run_id))
        return [{_decode(k): _decode(v) for k, v in raw.items()} for raw in pipe.execute() if raw]

    def active_runs(self) -> list[str]:
        """Every run not yet over, oldest first (the reconciler's index, however many runs there are)."""
        return [_decode(r) for r in self.redis.zrange(self.keys.active_runs, 0, -1)]

    def forget_active(self, run_id: str) -> None:
        """Drop a run from the active index (it is over, or its keys have expired)."""
        self.redis.zrem(self.keys.active_runs, run_id)

    def counts(self, run_id: str) -> dict[str, int]:
        meta = self.run(run_id)
        return {o.value: int(meta.get(f"n:{o.value}", 0)) for o in Outcome}

    def on_run_over(self, run_id: str) -> None:
        """Apply retention to every key of a finished run, and log the event."""
        meta = self.run(run_id)
        batches = int(meta.get("batches", 0))
        pipe = self.redis.pipeline(transaction=False)
        for key in (
            self.keys.run(run_id),
            self.keys.plan(run_id),
            self.keys.open_batches(run_id),
            self.keys.touch(run_id),
            self.keys.rejected(run_id),
            self.keys.rejected_done(run_id),
            self.keys.rps(run_id),
            self.keys.bad_shares(run_id),
            self.keys.deliveries(run_id),
        ):
            pipe.expire(key, self.retention_s)
        for number in range(batches):
            pipe.expire(self.keys.outcomes(run_id, number), self.retention_s)
            pipe.expire(self.keys.attempts(run_id, number), self.retention_s)
        pipe.zrem(self.keys.active_runs, run_id)
        pipe.execute()
        self.event("run_over", run_id=run_id, status=meta.get("status", ""), reason=meta.get("reason", ""))

    # --- batches, leases ---------------------------------------------------------------------
    def batch(self, run_id: str, number: int) -> Batch | None:
        value = self.redis.hget(self.keys.plan(run_id), str(number))
        if value is None:
            return None
        return Batch.parse(run_id, number, _decode(value))

    def iter_batches(self, run_id: str) -> Iterator[Batch]:
        for key, value in self.redis.hscan_iter(self.keys.plan(run_id), count=500):
            yield Batch.parse(run_id, int(_decode(key)), _decode(value))

    def finished_tasks(self, run_id: str, number: int) -> set[str]:
        return {_decode(k) for k in self.redis.hkeys(self.keys.outcomes(run_id, number))}

    def open_batches(self, run_id: str) -> list[int]:
        return sorted(int(_decode(b)) for b in self.redis.smembers(self.keys.open_batches(run_id)))

    def last_touch(self, run_id: str) -> dict[int, float]:
        raw = self.redis.hgetall(self.keys.touch(run_id))
        return {int(_decode(k)): float(_decode(v)) for k, v in raw.items()}

    def touch(self, run_id: str, number: int) -> None:
        self.redis.hset(self.keys.touch(run_id), str(number), str(int(time.time())))

    def take_lease(self, run_id: str, number: int, holder: str, ttl_s: int) -> bool:
        """Claim a batch: free, or already held by this very holder (worker node + job ID).

        Re-entry matters when a pool child is killed (OOM, SIGKILL): Celery requeues the same
        message at once (``task_reject_on_worker_lost``), and its new delivery on the same node
        has the same holder, while the dead child's lease has not yet expired. Refusing it as
        "busy" would ack the job and strand the batch until the reconciler. Two live copies of
        one holder cannot run at once: the child that held it is dead, and a visibility-timeout
        redelivery comes only after the job's hard time limit (checked by the settings).
        """
        key = self.keys.lease(run_id, number)
        taken = self.redis.eval(
            "local cur = redis.call('GET', KEYS[1]) "
            "if cur == false or cur == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end "
            "return false",
            1,
            key,
            holder,
            ttl_s,
        )
        if taken:
            self.touch(run_id, number)
            return True
        return False

    def renew_lease(self, run_id: str, number: int, holder: str, ttl_s: int) -> bool:
        key = self.keys.lease(run_id, number)
        # Renew only our own lease: compare-and-expire in one step.
        renewed = self.redis.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 0",
            1,
            key,
            holder,
            ttl_s,
        )
        if renewed:
            self.touch(run_id, number)
        return bool(renewed)

    def release_lease(self, run_id: str, number: int, holder: str) -> None:
        self.redis.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1,
            self.keys.lease(run_id, number),
            holder,
        )

    def note_delivery(self, run_id: str, number: int, pending: int) -> int:
        """Count this job's delivery; return how many in a row found no fewer tasks pending.

        Called under the batch's lease, so one job at a time. A job that kills its process
        (out of memory, a crash) is handed back by Celery for ever; this count is what stops it.
        """
        key, field = self.keys.deliveries(run_id), str(number)
        raw = self.redis.hget(key, field)
        count, last = (int(x) for x in _decode(raw).split(":")) if raw else (0, -1)
        count = count + 1 if 0 <= last <= pending else 1
        self.redis.hset(key, field, f"{count}:{pending}")
        return count

    def lease_holder(self, run_id: str, number: int) -> str | None:
        value = self.redis.get(self.keys.lease(run_id, number))
        return _decode(value) if value is not None else None

    # --- recording ----------------------------------------------------------------------------
    def record(
        self,
        batch: Batch,
        task_id: str,
        *,
        attempt: Attempt | None = None,
        final: FinalOutcome | None = None,
        bump: str = "",
        failure_ratio: float = 1.0,
        failure_min_attempts: int = 1_000_000_000,
        pipe: Any = None,
    ) -> RecordResult | None:
        """Append an attempt and/or write the final outcome, with counters, in one atomic step.

        With ``pipe`` the call is queued on that pipeline and ``None`` is returned.
        """
        run_id, number = batch.run_id, batch.number
        keys = [
            self.keys.run(run_id),
            self.keys.outcomes(run_id, number),
            self.keys.attempts(run_id, number),
            self.keys.open_batches(run_id),
            self.keys.rps(run_id),
        ]
        args = [
            task_id,
            attempt.to_json() if attempt else "",
            final.outcome.value if final else "",
            final.to_json() if final else "",
            number,
            len(batch.task_ids),
            bump,
            failure_ratio,
            failure_min_attempts,
            "1" if attempt is not None and attempt.verdict not in ("local", UNSENT) else "0",
            attempt.marker if attempt is not None else "",
        ]
        if pipe is not None:
            self._record(keys=keys, args=args, client=pipe)
            return None
        result = int(self._record(keys=keys, args=args))
        if result == 2:
            self.on_run_over(run_id)
        return RecordResult(written=result >= 1, duplicate=result == -1, run_over=result == 2)

    def gate(self, batch: Batch, task_id: str, intent: Attempt, holder: str) -> Gate:
        """Record that a DELETE is about to leave, if it still may (see ``ledger_lua/gate.lua``).

        Raises any Redis error: the caller then sends nothing. Safe to repeat (same intent, same
        answer, counted once), which is what makes redis-py's retry of a lost reply harmless.
        """
        run_id, number = batch.run_id, batch.number
        keys = [
            self.keys.run(run_id),
            self.keys.attempts(run_id, number),
            self.keys.lease(run_id, number),
            self.keys.rps(run_id),
            self.keys.protected_tasks,
            self.keys.protected_shares,
        ]
        args = [task_id, intent.to_json(), intent.marker, holder, batch.share_id]
        return Gate(int(self._gate(keys=keys, args=args)))

    def attempt_history(self, run_id: str, number: int, task_ids: Iterable[str]) -> dict[str, list[Attempt]]:
        """The attempts already recorded for these tasks (earlier deliveries of the batch)."""
        ids = list(task_ids)
        if not ids:
            return {}
        raw = self.redis.hmget(self.keys.attempts(run_id, number), ids)
        return {
            tid: [Attempt.from_json(line) for line in _decode(value).split("\n") if line]
            for tid, value in zip(ids, raw, strict=True)
            if value
        }

    def mark_share_missing(self, run_id: str, share_id: str, description: str) -> None:
        self.redis.hsetnx(self.keys.bad_shares(run_id), share_id, description)

    def share_missing(self, run_id: str, share_id: str) -> str | None:
        value = self.redis.hget(self.keys.bad_shares(run_id), share_id)
        return _decode(value) if value is not None else None

    def protected(self, share_id: str, task_ids: Iterable[str]) -> dict[str, str]:
        """Live protection lists, read at delete time: task ID -> reason, for protected tasks."""
        ids = list(task_ids)
        pipe = self.redis.pipeline(transaction=False)
        pipe.sismember(self.keys.protected_shares, share_id)
        pipe.smismember(self.keys.protected_tasks, ids) if ids else pipe.ping()
        share_hit, task_hits = pipe.execute()
        if share_hit:
            return dict.fromkeys(ids, "protected_share")
        if not ids:
            return {}
        return {tid: "protected_task" for tid, hit in zip(ids, task_hits, strict=True) if hit}

    # --- reading the audit ------------------------------------------------------------------
    def task_records(self, batch: Batch) -> Iterator[TaskRecord]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.outcomes(batch.run_id, batch.number))
        pipe.hgetall(self.keys.attempts(batch.run_id, batch.number))
        outs, atts = pipe.execute()
        outs = {_decode(k): _decode(v) for k, v in outs.items()}
        atts = {_decode(k): _decode(v) for k, v in atts.items()}
        for task_id in batch.task_ids:
            final = FinalOutcome.from_json(outs[task_id]) if task_id in outs else None
            attempts = [Attempt.from_json(line) for line in atts.get(task_id, "").split("\n") if line]
            yield TaskRecord(batch.run_id, batch.number, batch.share_id, task_id, final, attempts)

    def rejected(self, run_id: str) -> Iterator[dict[str, Any]]:
        key = self.keys.rejected(run_id)
        total = int(self.redis.llen(key))
        for start in range(0, total, 1000):
            for raw in self.redis.lrange(key, start, start + 999):
                yield json.loads(_decode(raw))

    def find_task(self, task_id: str, run_ids: Iterable[str] | None = None) -> Iterator[TaskRecord]:
        """Every record of a task, newest run first (scans the plans of the given or recent runs)."""
        if run_ids is None:
            run_ids = [_decode(r) for r in self.redis.zrevrange(self.keys.runs, 0, 199)]
        for run_id in run_ids:
            for batch in self.iter_batches(run_id):
                if task_id in batch.task_ids:
                    for record in self.task_records(batch):
                        if record.task_id == task_id:
                            yield record

    def rate_profile(self, run_id: str) -> dict[str, Any]:
        """Requests per second over the run: the busiest second and the average."""
        raw = self.redis.hgetall(self.keys.rps(run_id))
        per_second = {int(_decode(k)): int(_decode(v)) for k, v in raw.items()}
        if not per_second:
            return {
                "requests": 0,
                "busiest_second": 0,
                "average_rps": 0.0,
                "median_rps": 0,
                "p95_rps": 0,
                "seconds": 0,
                "per_second": [],
            }
        first, last = min(per_second), max(per_second)
        seconds = last - first + 1
        total = sum(per_second.values())
        ordered = sorted(per_second.get(t, 0) for t in range(first, last + 1))
        return {
            "requests": total,
            "busiest_second": ordered[-1],
            "average_rps": round(total / seconds, 2),
            "median_rps": ordered[len(ordered) // 2],
            "p95_rps": ordered[min(len(ordered) - 1, (len(ordered) * 95) // 100)],
            "seconds": seconds,
            # The record itself: API requests sent in each second of the run (epoch second, count).
            "per_second": [[t, per_second.get(t, 0)] for t in range(first, last + 1)],
        }

    # --- events -------------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        data = {"kind": kind, "at": _iso(time.time())} | {k: _field(v) for k, v in fields.items()}
        self.redis.xadd(self.keys.events, data, maxlen=100_000, approximate=True)

    def events(self, count: int = 100, kind: str | None = None) -> list[dict[str, str]]:
        rows = []
        for _id, raw in self.redis.xrevrange(self.keys.events, count=count * (5 if kind else 1)):
            row = {_decode(k): _decode(v) for k, v in raw.items()}
            if kind is None or row.get("kind") == kind:
                rows.append(row)
        return rows[:count]


class RecordBuffer:
    """Ledger writes queued and sent in pipelines: one Redis round trip for many tasks.

    Outcomes are flushed every ``flush_s`` seconds, when ``max_items`` are queued, and when the
    job ends. A DELETE never waits on this buffer: its write-ahead intent goes through
    :meth:`Audit.gate` first, so a worker dying inside the window loses only the *answer* of a
    request the audit already knows was sent (the task stays without a final outcome, and its
    next delivery settles it; see "our delete, our record" in :mod:`worker.purge`).
    ``flush_s=0`` writes each record at once.

    No Redis error drops a record: not a lost connection, not a refusal (out of memory,
    READONLY after a failover, MISCONF). Records that could not be written stay queued, in
    order, and are sent once Redis takes writes again; :meth:`close` waits for that up to
    ``retry_s``. Every ledger write is idempotent (``record.lua``), so a pipeline sent again
    after a partial failure, or a command redis-py repeats after a lost reply, counts once.
    Records added after :meth:`close` (a request that was on the wire when its job left the
    batch) are written at once, with the same wait.
    """

    _FAILED = (redis.RedisError,)

    def __init__(
        self, audit: Audit, *, flush_s: float, max_items: int = 64, retry_s: float = 60.0, **record_args: Any
    ) -> None:
        self.audit = audit
        self.flush_s = flush_s
        self.max_items = max_items
        self.retry_s = retry_s
        self.record_args = record_args
        self.duplicates = 0
        self._items: list[tuple[Batch, str, Attempt | None, FinalOutcome | None, str]] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._warned_at = -math.inf
        self._thread: threading.Thread | None = None
        if flush_s > 0:
            self._thread = threading.Thread(target=self._loop, name="sfs-audit-flush", daemon=True)
            self._thread.start()

    def add(
        self,
        batch: Batch,
        task_id: str,
        *,
        attempt: Attempt | None = None,
        final: FinalOutcome | None = None,
        bump: str = "",
    ) -> None:
        with self._lock:
            self._items.append((batch, task_id, attempt, final, bump))
            closed = self._closed
            due = self._thread is None or len(self._items) >= self.max_items
        if closed:
            self._flush_until_written()
        elif due:
            with contextlib.suppress(*self._FAILED):
                self.flush()  # if Redis refuses, kept queued: the next flush (at the latest close) sends it

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except self._FAILED as exc:
                now = time.monotonic()
                if now - self._warned_at >= 10:  # once per outage, not once per tick
                    self._warned_at = now
                    structlog.get_logger(__name__).warning("audit flush deferred", error=str(exc)[:200])
            except Exception:  # the flusher must outlive any one bad pipeline
                structlog.get_logger(__name__).exception("audit flush failed")

    def flush(self) -> None:
        with self._send_lock:  # one pipeline at a time keeps each task's records in order
            with self._lock:
                items, self._items = self._items, []
            if not items:
                return
            pipe = self.audit.redis.pipeline(transaction=True)
            for batch, task_id, attempt, final, bump in items:
                self.audit.record(
                    batch, task_id, attempt=attempt, final=final, bump=bump, pipe=pipe, **self.record_args
                )
            try:
                results = pipe.execute()
            except BaseException:
                with self._lock:
                    self._items[:0] = items  # back in front, in order, for the next try
                raise
        for (batch, _, _, _, _), result in zip(items, results, strict=True):
            if int(result) == 2:
                self.audit.on_run_over(batch.run_id)
            elif int(result) == -1:
                self.duplicates += 1

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        """Stop the flusher and write everything still queued (waiting up to ``retry_s`` for Redis)."""
        self._stop.set()
        with self._lock:
            self._closed = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._flush_until_written()

    def _flush_until_written(self) -> None:
        deadline = time.monotonic() + self.retry_s
        pause = 0.2
        while True:
            try:
                self.flush()
                return
            except self._FAILED:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(2.0, pause * 2)


def _field(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"), default=str)
    if hasattr(value, "__dataclass_fields__"):
        return json.dumps(asdict(value), default=str)
    return str(value)
