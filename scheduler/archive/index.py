"""The archive's records in Redis (key layout: :mod:`worker.ledger.keys`).

``archive:pending`` holds ended runs not yet archived (their keys have no EXPIRE), ``archive:runs``
one small entry per archived run that never expires (so ``runs list`` and ``audit export`` find a
run after its keys are gone), ``archive:retry`` the back-off of runs the target refused, and
``archive:stats`` fleet-wide totals for the exporter.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import redis
from redis.client import Pipeline

from worker.ledger.keys import Keys

if TYPE_CHECKING:
    from worker.ledger import Audit

#: The first retry of a run the target refused waits this long; each further one twice as long.
RETRY_BASE_S = 60.0
_ERROR_CHARS = 500


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class ArchivedRun:
    """What the index keeps of an archived run: where its bundle is, and what ``runs list`` shows."""

    run_id: str
    location: str
    digest: str
    archived_at: float
    status: str
    trigger: str
    dry_run: bool
    selected: int
    outcomes: dict[str, int]
    created_at: str | None
    finished_at: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> ArchivedRun:
        return cls(**json.loads(raw))


@dataclass(frozen=True, slots=True)
class Retry:
    tries: int
    next_at: float
    first_failed_at: float


@dataclass(frozen=True, slots=True)
class Stats:
    pending: int
    failing: int
    archived: int
    failures: int
    last_failure_at: float | None
    last_success_at: float | None
    last_error: str | None


class ArchiveIndex:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def pending(self) -> list[str]:
        """Ended runs not yet archived, the one that ended first first."""
        return [_text(r) for r in self.redis.zrange(self.keys.archive_pending, 0, -1)]

    def add_pending(self, run_id: str, ended_at: float) -> bool:
        return bool(self.redis.zadd(self.keys.archive_pending, {run_id: ended_at}, nx=True))

    def is_pending(self, run_id: str) -> bool:
        return self.redis.zscore(self.keys.archive_pending, run_id) is not None

    def retry(self, run_id: str) -> Retry | None:
        raw = self.redis.hget(self.keys.archive_retry, run_id)
        if raw is None:
            return None
        tries, next_at, first = _text(raw).split("|")
        return Retry(int(tries), float(next_at), float(first))

    def failed(self, run_id: str, error: str, *, retry_max_s: float, now: float) -> Retry:
        """Record a failed try: the run stays pending, its next try backs off (capped)."""
        before = self.retry(run_id)
        tries = (before.tries if before else 0) + 1
        wait = min(retry_max_s, RETRY_BASE_S * 2 ** (tries - 1))
        after = Retry(tries, now + wait, before.first_failed_at if before else now)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.archive_retry, run_id, f"{after.tries}|{after.next_at}|{after.first_failed_at}")
        pipe.hincrby(self.keys.archive_stats, "failures", 1)
        pipe.hset(self.keys.archive_stats, mapping={"last_failure_at": now, "last_error": error[:_ERROR_CHARS]})
        pipe.execute()
        return after

    def archived(self, entry: ArchivedRun, pipe: Pipeline) -> None:
        """The run's bundle is in the target: index it and take it off the pending queue (queued
        on ``pipe``, so the caller's retention goes in the same transaction)."""
        pipe.hset(self.keys.archived, entry.run_id, entry.to_json())
        pipe.zrem(self.keys.archive_pending, entry.run_id)
        pipe.hdel(self.keys.archive_retry, entry.run_id)
        pipe.hset(self.keys.archive_stats, "last_success_at", entry.archived_at)

    def forget_pending(self, run_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.archive_pending, run_id)
        pipe.hdel(self.keys.archive_retry, run_id)
        pipe.execute()

    def entry(self, run_id: str) -> ArchivedRun | None:
        raw = self.redis.hget(self.keys.archived, run_id)
        return ArchivedRun.from_json(_text(raw)) if raw is not None else None

    def entries(self, run_ids: list[str]) -> dict[str, ArchivedRun]:
        if not run_ids:
            return {}
        raws = self.redis.hmget(self.keys.archived, run_ids)
        return {r: ArchivedRun.from_json(_text(raw)) for r, raw in zip(run_ids, raws, strict=True) if raw is not None}

    def all_entries(self) -> list[ArchivedRun]:
        return [ArchivedRun.from_json(_text(v)) for v in self.redis.hvals(self.keys.archived)]

    def stats(self) -> Stats:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.archive_pending)
        pipe.hlen(self.keys.archive_retry)
        pipe.hlen(self.keys.archived)
        pipe.hgetall(self.keys.archive_stats)
        pending, failing, archived, raw = pipe.execute()
        stats = {_text(k): _text(v) for k, v in raw.items()}

        def at(name: str) -> float | None:
            return float(stats[name]) if stats.get(name) else None

        return Stats(
            pending=int(pending),
            failing=int(failing),
            archived=int(archived),
            failures=int(stats.get("failures") or 0),
            last_failure_at=at("last_failure_at"),
            last_success_at=at("last_success_at"),
            last_error=stats.get("last_error"),
        )


def iso(epoch: float) -> str:
    from scheduler.export import iso as export_iso

    return export_iso(epoch)


def listing(index: ArchiveIndex, audit: Audit, limit: int) -> list[dict[str, Any]]:
    """``runs list``: the newest runs, each with its archive state; a run whose keys are gone but
    whose bundle is archived is listed from the index (``in_redis`` false)."""
    from scheduler.report import run_report

    ids = [_text(r) for r in audit.redis.zrevrange(audit.keys.runs, 0, limit - 1)]
    entries = index.entries(ids)
    pipe = audit.redis.pipeline(transaction=False)
    for run_id in ids:
        pipe.exists(audit.keys.run(run_id))
        pipe.zscore(audit.keys.archive_pending, run_id)
    answers = pipe.execute()
    rows: list[dict[str, Any]] = []
    for n, run_id in enumerate(ids):
        live, pending = bool(answers[2 * n]), answers[2 * n + 1] is not None
        entry = entries.get(run_id)
        archive = (
            {"state": "archived", "location": entry.location, "digest": entry.digest, "at": iso(entry.archived_at)}
            if entry
            else {"state": "pending" if pending else None, "location": None, "digest": None, "at": None}
        )
        if live:
            try:
                rows.append(run_report(audit, run_id) | {"in_redis": True, "archive": archive})
            except KeyError:
                live = False  # expired between the two reads
        if not live and entry is not None:
            rows.append(
                {
                    "run_id": run_id,
                    "status": entry.status,
                    "dry_run": entry.dry_run,
                    "trigger": entry.trigger,
                    "selected": entry.selected,
                    "outcomes": entry.outcomes,
                    "created_at": entry.created_at,
                    "finished_at": entry.finished_at,
                    "in_redis": False,
                    "archive": archive,
                }
            )
    return rows
