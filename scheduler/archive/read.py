"""Reading an archived run back from its bundle, once Redis no longer has it.

The bundle is fetched from the target into a temporary file and verified against the digest the
index recorded when it was archived (:func:`scheduler.evidence.verify.verify_bundle`): a bundle
altered in the target is refused (exit 8), never read as if it were the record.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import redis

from scheduler.archive.index import ArchivedRun, ArchiveIndex
from scheduler.archive.target import fetch
from scheduler.evidence import members as m
from scheduler.evidence.verify import verify_bundle
from worker.ledger import Attempt, FinalOutcome, Outcome, TaskRecord
from worker.ledger.keys import Keys
from worker.settings import Settings


def archived_run(client: redis.Redis, keys: Keys, run_id: str) -> ArchivedRun | None:
    return ArchiveIndex(client, keys).entry(run_id)


@contextlib.contextmanager
def fetched(settings: Settings, entry: ArchivedRun) -> Iterator[zipfile.ZipFile]:
    """The run's bundle, fetched from its target and verified, open for reading."""
    with tempfile.TemporaryDirectory(prefix="sfs-archived-") as tmp:
        path = Path(tmp) / f"{entry.run_id}.zip"
        fetch(settings, entry.location, path)
        verify_bundle(path, entry.digest)
        with zipfile.ZipFile(path) as archive:
            yield archive


def _lines(archive: zipfile.ZipFile, name: str) -> Iterator[dict[str, Any]]:
    with archive.open(name) as raw:
        for line in io.TextIOWrapper(raw, encoding="utf-8"):
            yield json.loads(line)


def export_rows(archive: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    """The rows ``audit export`` writes, as the bundle holds them (its rows less the attempts)."""
    for row in _lines(archive, m.TASKS):
        yield {k: v for k, v in row.items() if k not in ("attempt_log", "batch")}
    for row in _lines(archive, m.REFUSED):
        yield {k: v for k, v in row.items() if k != "source"}


def _attempt(a: dict[str, Any]) -> Attempt:
    return Attempt(
        n=int(a["n"]),
        at=float(a["at"]),
        status=int(a.get("status") or 0),
        verdict=str(a.get("verdict") or ""),
        request_id=a.get("request_id"),
        code=a.get("error_code"),
        msg=a.get("error_message"),
        latency_ms=float(a.get("latency_ms") or 0.0),
        worker=str(a.get("worker") or ""),
        op=str(a.get("op") or "delete"),
    )


def task_records(archive: zipfile.ZipFile, task_id: str) -> list[TaskRecord]:
    """A task's record in the bundle, as ``audit task`` shows it from the ledger."""
    records = []
    for row in _lines(archive, m.TASKS):
        if row.get("task_id") != task_id:
            continue
        final = None
        if row.get("outcome") not in (None, "", "pending"):
            ended = row.get("finished_at")
            at = datetime.fromisoformat(ended.replace("Z", "+00:00")).timestamp() if ended else 0.0
            final = FinalOutcome(Outcome(row["outcome"]), at, reason=row.get("reason") or None)
        records.append(
            TaskRecord(
                run_id=str(row["run_id"]),
                batch=int(row.get("batch") or 0),
                share_id=str(row.get("share_id") or ""),
                task_id=task_id,
                final=final,
                attempts=[_attempt(a) for a in row.get("attempt_log") or []],
            )
        )
    return records


def export_archived(settings: Settings, client: redis.Redis, keys: Keys, run_id: str, stream: TextIO, fmt: str) -> int:
    """``audit export`` of a run Redis no longer has, from its archived bundle; raises
    :class:`KeyError` when the archive does not know the run either."""
    from scheduler.export import COLUMNS, TARGET_COLUMN, write_rows

    entry = archived_run(client, keys, run_id)
    if entry is None:
        raise KeyError(run_id)
    with fetched(settings, entry) as archive:
        report = json.loads(archive.read(m.REPORT))
        columns = [*COLUMNS, TARGET_COLUMN] if report.get("targets") else COLUMNS
        return write_rows(export_rows(archive), stream, fmt, columns)


def archived_task(settings: Settings, client: redis.Redis, keys: Keys, run_id: str, task_id: str) -> list[TaskRecord]:
    """``audit task --run RUN`` of a run Redis no longer has; [] when the archive does not know it."""
    entry = archived_run(client, keys, run_id)
    if entry is None:
        return []
    with fetched(settings, entry) as archive:
        return task_records(archive, task_id)
