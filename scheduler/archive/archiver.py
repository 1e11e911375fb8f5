"""The archiving pass, run by the reconciler (every minute): ended runs' bundles to the target,
then their retention.

A run that ends with a target set gets no EXPIRE (:meth:`worker.ledger.runs.RunStore.on_run_over`
queues it in ``archive:pending`` instead). Each pass writes the bundle of every pending run that is
due, puts it in the target, and in one transaction records where (the run's hash and the archive
index), takes the run off the queue and gives its keys their retention, counted from the run's end:
a run archived late is not kept longer than its policy says, and one already past its retention
goes right after it is archived. A target that fails leaves the run queued with its keys intact:
it is tried again on a later pass (after 1, 2, 4, ... minutes, at most SFS_CLEANUP_ARCHIVE_RETRY_MAX_S),
logged, and counted for the exporter; it is never dropped.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import structlog

from scheduler.archive.index import ArchivedRun, ArchiveIndex
from scheduler.archive.target import ArchiveTarget, ArchiveTargetError, target_for
from scheduler.evidence.bundle import write_bundle
from scheduler.report import run_report
from worker.ledger import OVER, Audit, RunStatus
from worker.settings import Settings

log = structlog.get_logger(__name__)

#: Runs archived in one pass at most: the reconciler's other work must not wait behind a backlog.
MAX_RUNS_PER_PASS = 10
#: Ended runs among the newest this many that are adopted when found unqueued (see :func:`adopt`).
ADOPT_RECENT = 200
#: Only one scheduler archives at a time; a process killed mid-pass frees the lock after this.
LOCK_S = 900


@dataclass
class PassResult:
    archived: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    skipped: bool = False  # another scheduler holds the lock, or no target is set


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def archive_pass(
    audit: Audit,
    settings: Settings,
    *,
    target: ArchiveTarget | None = None,
    now: float | None = None,
    max_runs: int = MAX_RUNS_PER_PASS,
) -> PassResult:
    """One pass: adopt unqueued ended runs, then archive every due pending run (up to ``max_runs``)."""
    target = target if target is not None else target_for(settings)
    if target is None:
        return PassResult(skipped=True)
    lock = audit.redis.lock(audit.keys.archive_lock, timeout=LOCK_S, blocking=False)
    if not lock.acquire(blocking=False):
        return PassResult(skipped=True)
    try:
        index = ArchiveIndex(audit.redis, audit.keys)
        result = PassResult(adopted=adopt(audit, index))
        for run_id in index.pending():
            if len(result.archived) + len(result.failed) >= max_runs:
                break
            at = time.time() if now is None else now
            retry = index.retry(run_id)
            if retry is not None and retry.next_at > at:
                continue  # backing off
            _archive_one(audit, settings, index, target, run_id, at, result)
        return result
    finally:
        # Expired during a long pass: nothing of ours to free.
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()


def adopt(audit: Audit, index: ArchiveIndex) -> list[str]:
    """Queue ended, unarchived runs that are not queued: runs that ended before the target was
    set, or on a process started without it. Their keys lose any EXPIRE until they are archived."""
    run_ids = [_text(r) for r in audit.redis.zrevrange(audit.keys.runs, 0, ADOPT_RECENT - 1)]
    pipe = audit.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hmget(audit.keys.run(run_id), ["status", "archived_at", "finished_at", "batches"])
        pipe.zscore(audit.keys.archive_pending, run_id)
    answers = pipe.execute()
    adopted = []
    over = {s.value for s in OVER}
    for n, run_id in enumerate(run_ids):
        (status, archived_at, finished_at, batches), queued = answers[2 * n], answers[2 * n + 1]
        if status is None or _text(status) not in over or archived_at is not None or queued is not None:
            continue
        persist = audit.redis.pipeline(transaction=False)
        for key in audit.run_keys(run_id, int(batches or 0)):
            persist.persist(key)
        persist.execute()
        index.add_pending(run_id, float(finished_at or time.time()))
        adopted.append(run_id)
    if adopted:
        log.info("ended runs queued for the archive", runs=len(adopted))
    return adopted


def _archive_one(
    audit: Audit,
    settings: Settings,
    index: ArchiveIndex,
    target: ArchiveTarget,
    run_id: str,
    now: float,
    result: PassResult,
) -> None:
    meta = audit.run(run_id)
    if not meta:
        # Its keys are gone (deleted by hand, or expired on a process without the setting):
        # nothing left to archive. Said loudly, and kept in the events.
        index.forget_pending(run_id)
        audit.event("archive_lost", run_id=run_id)
        log.error("run ended but its keys are gone before it was archived", run_id=run_id)
        result.lost.append(run_id)
        return
    if RunStatus(meta.get("status", "")) not in OVER:
        return
    try:
        with tempfile.TemporaryDirectory(prefix="sfs-archive-") as tmp:
            path = Path(tmp) / f"{run_id}.zip"
            made = write_bundle(audit, settings, run_id, path, made_by=f"archiver@{socket.gethostname()}")
            location = target.put(path.name, path)
    except Exception as exc:
        error = str(exc) if isinstance(exc, ArchiveTargetError) else f"{type(exc).__name__}: {exc}"
        retry = index.failed(run_id, error, retry_max_s=settings.archive_retry_max_s, now=now)
        log.warning(
            "archiving a run failed; its keys stay and it is tried again",
            run_id=run_id,
            error=error,
            tries=retry.tries,
            next_try_in_s=round(retry.next_at - now),
            exc_info=not isinstance(exc, ArchiveTargetError),
        )
        result.failed.append(run_id)
        return
    report = run_report(audit, run_id)
    entry = ArchivedRun(
        run_id=run_id,
        location=location,
        digest=made.digest,
        archived_at=now,
        status=str(report["status"]),
        trigger=str(report["trigger"] or ""),
        dry_run=bool(report["dry_run"]),
        selected=int(report["selected"]),
        outcomes=dict(report["outcomes"]),
        created_at=report["created_at"],
        finished_at=report["finished_at"],
    )
    ended = float(meta.get("finished_at") or now)
    keep = max(1, round(audit.retention.for_run(meta) - (now - ended)))
    pipe = audit.redis.pipeline(transaction=True)
    pipe.hset(
        audit.keys.run(run_id),
        mapping={"archived_at": now, "archive_location": location, "archive_digest": made.digest},
    )
    for key in audit.run_keys(run_id, int(meta.get("batches", 0))):
        pipe.expire(key, keep)
    index.archived(entry, pipe)
    pipe.execute()
    audit.event("run_archived", run_id=run_id, location=location, digest=made.digest, keep_s=keep)
    log.info("run archived", run_id=run_id, location=location, digest=made.digest, keep_s=keep)
    result.archived.append(run_id)
