"""Writing a run's evidence bundle: one zip archive an auditor can check without our systems.

Everything is streamed: task rows are read from the ledger one plan batch at a time (as
:mod:`scheduler.export` does) and written through a hashing writer into the archive, so a run of
a million tasks needs no more memory than one batch. The archive is written to a temporary file
beside the destination and renamed into place only when complete: a reader never sees half a
bundle, and an existing file is never replaced unless asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from scheduler.evidence import members as m
from scheduler.evidence.redact import Redactor, secret_values
from scheduler.export import attempt_dict, iso, refused_row, target_projects, task_row
from scheduler.guard import settings_view
from scheduler.report import run_report
from worker.errors import UsageError
from worker.ledger import OVER, Audit, Batch, TaskRecord
from worker.ledger.chain import masked
from worker.settings import Settings

PACKAGE = "sfs-turbo-cleanup"


class BundleRefusedError(UsageError):
    """No bundle written: an unknown run, a run not over, or a file that is there already."""


@dataclass(frozen=True, slots=True)
class BundleResult:
    path: Path
    digest: str  # SHA-256 of the MANIFEST: the bundle's one value for a ticket
    rows: int
    refused: int
    complete: bool


class _Archive:
    """A zip being written, each member hashed and sized as it goes (and masked of secrets)."""

    def __init__(self, file: IO[bytes], redact: Redactor) -> None:
        self.zip = zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED)
        self.entries: list[m.Entry] = []
        self.redact = redact

    @contextlib.contextmanager
    def member(self, name: str) -> Iterator[Any]:
        digest, size = hashlib.sha256(), 0
        # force_zip64: the size of a streamed member is unknown until it ends, and may pass 4 GiB.
        info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])  # a bare name would say 1980
        info.compress_type = zipfile.ZIP_DEFLATED
        with self.zip.open(info, "w", force_zip64=True) as raw:

            def write(text: str) -> None:
                nonlocal size
                data = self.redact(text).encode()
                raw.write(data)
                digest.update(data)
                size += len(data)

            yield write
        self.entries.append(m.Entry(name, size, digest.hexdigest()))

    def json(self, name: str, value: Any) -> None:
        with self.member(name) as write:
            write(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True) + "\n")

    def raw(self, name: str, data: bytes) -> None:
        self.zip.writestr(name, data)


def bundle_row(record: TaskRecord, project_id: str, target: str | None = None) -> dict[str, Any]:
    """The export's row of a task, plus its batch and every attempt in full."""
    return task_row(record, project_id, target) | {
        "batch": record.batch,
        "attempt_log": [attempt_dict(a) for a in record.attempts],
    }


def _chained(redact: Redactor, stored: str) -> str:
    """A record as the chain member carries it: as stored, or by its digest if it holds a secret
    (masking it would break its hash; the task rows carry it masked)."""
    return masked(stored) if redact.finds(stored) else stored


def _unique(batches: list[Batch]) -> list[Batch]:
    """HSCAN may return an entry twice if the hash is rehashed meanwhile: each batch once."""
    return list({b.number: b for b in batches}.values())


def _jsonl(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")) + "\n"


def _settings_record(meta: dict[str, str], settings: Settings) -> dict[str, Any]:
    """The selection settings the plan was made under (stored with it), else today's; never a secret."""
    stored = meta.get("settings_view")
    view, source = (json.loads(stored), "plan") if stored else (settings_view(settings), "bundling")
    canonical = json.dumps(view, sort_keys=True, separators=(",", ":"))
    return {"source": source, "sha256": hashlib.sha256(canonical.encode()).hexdigest(), "view": view}


def _incomplete_note(meta: dict[str, str]) -> str:
    return f"made with --allow-incomplete while the run was {meta.get('status')}: outcomes may have changed since"


def _tool_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def write_bundle(
    audit: Audit,
    settings: Settings,
    run_id: str,
    dest: Path,
    *,
    made_by: str,
    force: bool = False,
    allow_incomplete: bool = False,
) -> BundleResult:
    meta = audit.run(run_id)
    if not meta:
        raise BundleRefusedError(f"no run {run_id!r}")
    status = meta.get("status", "")
    complete = status in OVER
    if not complete and not allow_incomplete:
        raise BundleRefusedError(
            f"run {run_id} is {status or 'of unknown status'}, not over (finished, aborted or cancelled): "
            "its evidence may still change; wait for it, or add --allow-incomplete"
        )
    if dest.exists() and not force:
        raise BundleRefusedError(f"{dest} exists; add --force to replace it")
    if not dest.parent.is_dir():
        raise BundleRefusedError(f"no directory {dest.parent} to write {dest.name} in")
    # Beside the destination, so the final rename stays on one file system (atomic).
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            archive = _Archive(file, Redactor(secret_values(settings)))
            result = _write(archive, audit, settings, run_id, meta, made_by=made_by, complete=complete)
            archive.zip.close()
            file.flush()
            os.fsync(file.fileno())
        _publish(tmp, dest, force=force)
    finally:
        tmp.unlink(missing_ok=True)
    return BundleResult(dest, *result, complete=complete)


def _write(
    archive: _Archive,
    audit: Audit,
    settings: Settings,
    run_id: str,
    meta: dict[str, str],
    *,
    made_by: str,
    complete: bool,
) -> tuple[str, int, int]:
    project_id = meta.get("project_id", "")
    projects = target_projects(meta)  # a run over a targets file: each task's target's project
    # The report first: for a run not over, outcomes written later only add to what it counts.
    report = run_report(audit, run_id)
    archive.json(m.REPORT, report)
    rows = 0
    states = audit.chain_states(run_id)
    batches = _unique(sorted(audit.iter_batches(run_id), key=lambda b: b.number))
    with archive.member(m.TASKS) as write:
        for batch in batches:
            project = projects.get(batch.target, project_id) if batch.target else project_id
            for record in audit.task_records(batch):
                write(_jsonl(bundle_row(record, project, batch.target)))
                rows += 1
    # A zip member is written whole before the next one starts: the records are read again.
    with archive.member(m.CHAIN) as write:
        for batch in batches:
            finals, attempts = audit.batch_records(batch)
            state = states.get(batch.number)
            line = {"batch": batch.number, "head": state.head if state else None, "n": state.count if state else 0}
            finals = {t: _chained(archive.redact, v) for t, v in finals.items()}
            attempts = {t: "\n".join(_chained(archive.redact, x) for x in v.split("\n")) for t, v in attempts.items()}
            write(_jsonl(line | {"finals": finals, "attempts": attempts}))
    refused = 0
    with archive.member(m.REFUSED) as write:
        for item in audit.rejected(run_id):
            write(_jsonl(refused_row(run_id, project_id, item) | {"source": item.get("source", "")}))
            refused += 1
    rate = report["rate"]
    archive.json(
        m.RATE,
        rate | {"throttled_429": report["throttled"], "retries": report["retries"], "attempts": report["attempts"]},
    )
    policy_keys = ("policy_fp", "policy_name", "policy_file_path", "policy_file_sha256", "policies_file_sha256")
    archive.json(m.POLICY, {"policy": report["policy"]} | {k: meta.get(k) for k in policy_keys})
    archive.json(m.SETTINGS, _settings_record(meta, settings))
    # The sealed head (when the run ended), else the head over the batches as they are now.
    chain_head = meta.get("chain_head") or audit.chain.run_head(run_id, states.items())
    archive.json(
        m.BUNDLE,
        {
            "format": m.FORMAT,
            "run_id": run_id,
            "run_status": meta.get("status"),
            "complete": complete,
            "incomplete_note": None if complete else _incomplete_note(meta),
            "tool": PACKAGE,
            "tool_version": _tool_version(),
            "created_at": iso(time.time()),
            "created_by": made_by,
            "task_rows": rows,
            "refused_lines": refused,
            # The run's hash chain: its head and length when bundled, and whether it is keyed
            # (SFS_CLEANUP_AUDIT_KEY: then only its holders can recompute it).
            "chain_head": chain_head,
            "chain_n": sum(s.count for s in states.values()),
            "chain_keyed": audit.chain.keyed,
            "masked_secrets": archive.redact.masked,
        },
    )
    manifest = m.render_manifest(archive.entries)
    archive.raw(m.MANIFEST, manifest)
    digest = m.digest(manifest)
    archive.raw(m.MANIFEST_DIGEST, f"{digest}  {m.MANIFEST}\n".encode())
    return digest, rows, refused


def _publish(tmp: Path, dest: Path, *, force: bool) -> None:
    """Put the finished file in place atomically; without ``force``, never over an existing file."""
    if force:
        os.replace(tmp, dest)
        return
    # A hard link fails if the name is taken, even by a file created since the check above.
    try:
        os.link(tmp, dest)
    except FileExistsError as exc:
        raise BundleRefusedError(f"{dest} exists; add --force to replace it") from exc
    except OSError:  # a file system without hard links: check, then rename
        if dest.exists():
            raise BundleRefusedError(f"{dest} exists; add --force to replace it") from None
        os.replace(tmp, dest)
