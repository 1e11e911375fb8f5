"""The completion report of a run: one row per selected task, in JSON lines or CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from worker.ledger import Attempt, Audit, TaskRecord

COLUMNS = [
    "run_id",
    "project_id",
    "share_id",
    "task_id",
    "outcome",
    "reason",
    "attempts",
    "last_http_status",
    "error_code",
    "error_message",
    "request_ids",
    "finished_at",
    "input_line",
]


# A cell starting with one of these is a formula to a spreadsheet, and an error message or a
# refused input line is text someone else wrote: "=HYPERLINK(...)" must stay text when opened.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _inert(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a leading single quote before a formula start."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


#: After :data:`COLUMNS` in the export of a run over a targets file: the task's target.
TARGET_COLUMN = "target"


def task_row(record: TaskRecord, project_id: str, target: str | None = None) -> dict[str, Any]:
    """A planned task's row (the evidence bundle writes the same row, plus every attempt); a task
    of a targets file's target has its ``target`` too (and ``project_id`` is that target's)."""
    row = record.as_row(project_id) | {"input_line": ""}
    return row if target is None else row | {TARGET_COLUMN: target}


def target_projects(meta: dict[str, str]) -> dict[str, str]:
    """The project of each target of a run over a targets file (none for the one-project shorthand)."""
    summary = json.loads(meta.get("summary") or "{}")
    return {name: str(info.get("project_id", "")) for name, info in (summary.get("targets") or {}).items()}


def refused_row(run_id: str, project_id: str, item: dict[str, Any]) -> dict[str, Any]:
    """A refused input line's row: its outcome is ``rejected``; its raw text is the message."""
    return {
        "run_id": run_id,
        "project_id": project_id,
        "share_id": "",
        "task_id": "",
        "outcome": "rejected",
        "reason": item.get("reason", ""),
        "attempts": 0,
        "last_http_status": "",
        "error_code": "",
        "error_message": item.get("raw", ""),
        "request_ids": [],
        "finished_at": "",
        "input_line": item.get("line", ""),
    }


def _rows(audit: Audit, run_id: str, project_id: str, projects: dict[str, str]) -> Any:
    for batch in audit.iter_batches(run_id):
        project = projects.get(batch.target, project_id) if batch.target else project_id
        for record in audit.task_records(batch):
            yield task_row(record, project, batch.target)
    for item in audit.rejected(run_id):
        yield refused_row(run_id, project_id, item)


def write_export(audit: Audit, run_id: str, project_id: str, stream: TextIO, fmt: str) -> int:
    """Stream the report (memory stays flat: one batch at a time); returns the row count.

    A run over a targets file has one more column, ``target``."""
    projects = target_projects(audit.run(run_id))
    columns = [*COLUMNS, TARGET_COLUMN] if projects else COLUMNS
    return write_rows(_rows(audit, run_id, project_id, projects), stream, fmt, columns)


def write_rows(rows: Iterable[dict[str, Any]], stream: TextIO, fmt: str, columns: list[str] = COLUMNS) -> int:
    """Write export rows (from the ledger, or from an archived bundle) as jsonl or csv."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            cells = row | {"request_ids": " ".join(row["request_ids"])}
            writer.writerow({name: _inert(value) for name, value in cells.items()})
            count += 1
    else:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=True) + "\n")
            count += 1
    return count


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def attempt_dict(a: Attempt) -> dict[str, Any]:
    """One attempt in full: ``audit task --json`` and the evidence bundle's rows."""
    return {
        "n": a.n,
        "op": a.op,
        "at": a.at,
        "at_iso": iso(a.at),
        "status": a.status,
        "verdict": a.verdict,
        "error_code": a.code,
        "error_message": a.msg,
        "request_id": a.request_id,
        "latency_ms": a.latency_ms,
        "worker": a.worker,
    }
