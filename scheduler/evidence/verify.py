"""Checking an evidence bundle offline: nothing but the file (no Redis, no settings).

The checks run in order and stop at the first problem: the archive reads, the manifest's own
digest, every member listed with its size and SHA-256 and no member missing or extra, then the
bundle's internal consistency (counts that must add up, request IDs that must match). A bundle
whose members were rewritten *and* whose manifest was recomputed passes the first part; the
consistency checks catch a forged count, and the digest kept outside (``--digest``, a ticket)
catches the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.evidence import members as m
from worker.errors import CleanupError
from worker.ledger import OVER, Attempt, FinalOutcome, Outcome
from worker.ledger.chain import Chain, ChainState, check_batch, is_masked, split_seq

#: ``audit verify``'s exit code for a bundle that is tampered with or inconsistent.
EXIT_TAMPERED = 8
_CHUNK = 1 << 20
#: What reading a damaged member raises: a bad CRC, a truncated or garbled deflate stream.
_CORRUPT = (zipfile.BadZipFile, OSError, EOFError, zlib.error)


class BundleProblemError(CleanupError):
    """The bundle is not what it claims: tampered with, truncated, or inconsistent."""

    exit_code = EXIT_TAMPERED


@dataclass
class Verification:
    digest: str = ""
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def verify_bundle(path: Path, expected_digest: str | None = None, *, audit_key: bytes | None = None) -> Verification:
    """Every check, in order; raises :class:`BundleProblemError` at the first problem.

    ``audit_key``: the chain's key (``SFS_CLEANUP_AUDIT_KEY``), to recompute a keyed chain's hashes.
    """
    result = Verification()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleProblemError(f"{path} is not a readable zip archive ({exc})") from exc
    with archive:
        entries = _check_manifest(archive, result, expected_digest)
        _check_members(archive, entries, result)
        try:
            _check_consistency(archive, result)
            _check_chain(archive, result, audit_key)
        except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            # Members that match their hashes but not the format: a forged manifest over forged data.
            raise BundleProblemError(f"a member is not in the bundle's format ({type(exc).__name__}: {exc})") from exc
    return result


def _read(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except KeyError as exc:
        raise BundleProblemError(f"member {name} is missing") from exc
    except _CORRUPT as exc:
        raise BundleProblemError(f"member {name} cannot be read ({exc})") from exc


def _check_manifest(archive: zipfile.ZipFile, result: Verification, expected: str | None) -> list[m.Entry]:
    # A zip may hold two members of one name (a reader takes the last): a classic way to smuggle.
    if twice := sorted(n for n, count in Counter(archive.namelist()).items() if count > 1):
        raise BundleProblemError(f"member {twice[0]} appears more than once in the archive")
    manifest = _read(archive, m.MANIFEST)
    result.digest = m.digest(manifest)
    recorded = _read(archive, m.MANIFEST_DIGEST).decode("ascii", "replace").split()
    if not recorded or recorded[0] != result.digest:
        raise BundleProblemError(
            f"MANIFEST was changed: its SHA-256 is {result.digest}, {m.MANIFEST_DIGEST} records "
            f"{recorded[0] if recorded else 'nothing'}"
        )
    result.checked.append(f"MANIFEST matches its recorded SHA-256 {result.digest}")
    if expected is not None:
        if expected.strip().lower().removeprefix("sha256:") != result.digest:
            raise BundleProblemError(f"the bundle's digest is {result.digest}, not the expected {expected}")
        result.checked.append("the bundle's digest equals the one expected (--digest)")
    try:
        entries = m.parse_manifest(manifest)
    except m.ManifestError as exc:
        raise BundleProblemError(str(exc)) from exc
    listed = {e.name for e in entries}
    if missing := [n for n in m.REQUIRED if n not in listed]:
        raise BundleProblemError(f"MANIFEST does not list the required member {missing[0]}")
    return entries


def _check_members(archive: zipfile.ZipFile, entries: list[m.Entry], result: Verification) -> None:
    present = set(archive.namelist()) - {m.MANIFEST, m.MANIFEST_DIGEST}
    listed = {e.name for e in entries}
    if missing := sorted(listed - present):
        raise BundleProblemError(f"member {missing[0]} is listed in MANIFEST but missing from the archive")
    if extra := sorted(present - listed):
        raise BundleProblemError(f"member {extra[0]} is in the archive but not listed in MANIFEST")
    for entry in entries:
        digest, size = hashlib.sha256(), 0
        try:
            with archive.open(entry.name) as member:
                while chunk := member.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except _CORRUPT as exc:
            raise BundleProblemError(f"member {entry.name} cannot be read ({exc})") from exc
        if size != entry.size:
            raise BundleProblemError(f"member {entry.name} is {size} bytes, MANIFEST says {entry.size}")
        if digest.hexdigest() != entry.sha256:
            raise BundleProblemError(f"member {entry.name} was changed: its SHA-256 differs from MANIFEST's")
    result.checked.append(f"{len(entries)} members: each listed once, sizes and SHA-256 as in MANIFEST, none extra")


def _json(archive: zipfile.ZipFile, name: str) -> dict[str, Any]:
    try:
        value = json.loads(_read(archive, name))
    except ValueError as exc:
        raise BundleProblemError(f"member {name} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise BundleProblemError(f"member {name} is not a JSON object")
    return value


def _lines(archive: zipfile.ZipFile, name: str) -> Any:
    with archive.open(name) as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), 1):
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise BundleProblemError(f"{name} line {number} is not JSON ({exc})") from exc
            if not isinstance(value, dict):
                raise BundleProblemError(f"{name} line {number} is not a JSON object")
            yield number, value


def _check_header(info: dict[str, Any], report: dict[str, Any]) -> None:
    run_id = info.get("run_id")
    if info.get("format") not in (m.FORMAT, m.FORMAT_1):
        raise BundleProblemError(f"{m.BUNDLE} names the format {info.get('format')!r}, not {m.FORMAT}")
    if bool(info.get("complete")) != (info.get("run_status") in OVER):
        raise BundleProblemError(
            f"{m.BUNDLE} says complete={info.get('complete')} for a run that was {info.get('run_status')!r}"
        )
    if report.get("run_id") != run_id:
        raise BundleProblemError(f"{m.REPORT} is of run {report.get('run_id')!r}, the bundle of {run_id!r}")


def _recount_tasks(archive: zipfile.ZipFile, run_id: Any, recount: Counter[str]) -> tuple[int, int]:
    """Rows counted by outcome into ``recount``; returns (rows, answered attempts without a request ID)."""
    rows = no_id = 0
    for number, row in _lines(archive, m.TASKS):
        rows += 1
        recount[row.get("outcome", "")] += 1
        log = row.get("attempt_log") or []
        where = f"{m.TASKS} line {number} (task {row.get('task_id')})"
        if row.get("run_id") != run_id:
            raise BundleProblemError(f"{where} is of run {row.get('run_id')!r}")
        if row.get("attempts") != len(log):
            raise BundleProblemError(f"{where} counts {row.get('attempts')} attempts but records {len(log)}")
        if row.get("request_ids") != [a.get("request_id") for a in log if a.get("request_id")]:
            raise BundleProblemError(f"{where}: its request IDs differ from those of its attempts")
        no_id += sum(1 for a in log if a.get("status") and not a.get("request_id"))
    return rows, no_id


def _check_consistency(archive: zipfile.ZipFile, result: Verification) -> None:
    info, report = _json(archive, m.BUNDLE), _json(archive, m.REPORT)
    _check_header(info, report)
    recount: Counter[str] = Counter()
    rows, no_id = _recount_tasks(archive, info.get("run_id"), recount)
    refused = 0
    for number, row in _lines(archive, m.REFUSED):
        refused += 1
        if row.get("outcome") != Outcome.REJECTED:
            raise BundleProblemError(f"{m.REFUSED} line {number} has the outcome {row.get('outcome')!r}")
    recount[Outcome.REJECTED.value] += refused
    if (info.get("task_rows"), info.get("refused_lines")) != (rows, refused):
        raise BundleProblemError(
            f"{m.BUNDLE} records {info.get('task_rows')} task rows and {info.get('refused_lines')} refused "
            f"lines; the bundle holds {rows} and {refused}"
        )
    selected = report.get("selected")
    if isinstance(selected, int) and selected >= 0 and selected != rows + refused:
        raise BundleProblemError(
            f"the report's selected ({selected}) is not the {rows} task rows plus {refused} refused lines"
        )
    result.checked.append(f"selected = {rows} task rows + {refused} refused lines = {rows + refused}")
    _check_outcomes(report, recount, complete=bool(info.get("complete")), result=result)
    result.checked.append("every row's request IDs are those its attempts recorded")
    if not info.get("complete"):
        result.notes.append(str(info.get("incomplete_note") or "made from a run that was not over"))
    if no_id:
        result.notes.append(f"{no_id} answered attempts carry no request ID (the API gave none)")


def _check_outcomes(report: dict[str, Any], recount: Counter[str], *, complete: bool, result: Verification) -> None:
    outcomes: dict[str, Any] = report.get("outcomes") or {}
    for outcome in Outcome:
        said, found = outcomes.get(outcome.value, 0), recount.get(outcome.value, 0)
        # Bundled while the run went on: the report was read first, and outcomes are only ever added.
        if (said != found) if complete else (said > found):
            raise BundleProblemError(
                f"the report counts {said} {outcome.value} but the rows hold {found}"
                + ("" if complete else " (fewer than the report, which was read first)")
            )
    if complete and recount.get("pending"):
        raise BundleProblemError(f"the run is over but {recount['pending']} rows have no outcome")
    if complete and report.get("status") not in OVER:
        raise BundleProblemError(f"the bundle says the run is over, its report says {report.get('status')!r}")
    result.checked.append(
        "the report's outcome counts equal a recount of the rows"
        if complete
        else "the report's outcome counts are within a recount of the rows (incomplete run: they may have grown)"
    )


def _chain_lines(archive: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    for number, line in _lines(archive, m.CHAIN):
        if not isinstance(line.get("finals"), dict) or not isinstance(line.get("attempts"), dict):
            raise BundleProblemError(f"{m.CHAIN} line {number} is not a batch's records")
        yield line


def _check_chain(archive: zipfile.ZipFile, result: Verification, key: bytes | None) -> None:
    """The hash chain recomputed from the records the bundle holds, and the task rows against them."""
    info = _json(archive, m.BUNDLE)
    head = info.get("chain_head")
    if m.CHAIN not in archive.namelist():
        if head or info.get("format") == m.FORMAT:
            raise BundleProblemError(f"{m.BUNDLE} records a chain head but the bundle has no {m.CHAIN}")
        result.notes.append("no hash chain in this bundle (made before the ledger kept one)")
        return
    run_id = str(info.get("run_id"))
    keyed = bool(info.get("chain_keyed"))
    if keyed and key is None:
        result.notes.append(
            "the chain is keyed and SFS_CLEANUP_AUDIT_KEY is not set: positions and counts checked, not hashes"
        )
    chain = Chain(key if keyed else None)
    states: dict[int, ChainState] = {}
    rows = _Rows(archive)
    for line in _chain_lines(archive):
        number = int(line["batch"])
        stored = ChainState(str(line["head"]), int(line["n"])) if line.get("head") else None
        finals, attempts = line["finals"], line["attempts"]
        check = check_batch(chain, run_id, number, finals, attempts, stored, heads=key is not None or not keyed)
        if check.problem:
            raise BundleProblemError(f"{m.CHAIN}: first broken link: {check.problem}")
        if stored is not None:
            states[number] = stored
        if info.get("complete"):
            _check_rows_against(rows.take(number), finals, attempts)
    if info.get("complete") and (left := rows.left) is not None:
        raise BundleProblemError(
            f"{m.TASKS}: task {left.get('task_id')} of batch {left.get('batch')} is in no chain line"
        )
    total = sum(s.count for s in states.values())
    if info.get("chain_n") != total:
        raise BundleProblemError(f"{m.BUNDLE} records {info.get('chain_n')} chain entries, {m.CHAIN} holds {total}")
    if key is not None or not keyed:
        if chain.run_head(run_id, states.items()) != head:
            raise BundleProblemError(f"the run's chain head {head} is not the one its batches' heads give")
        how = "keyed (HMAC-SHA256)" if keyed else "unkeyed (SHA-256: anyone can rebuild it)"
        result.checked.append(f"hash chain of {total} entries recomputed, {how}: head {head}")
    if info.get("complete"):
        result.checked.append("every task row's outcome and request IDs are those its chained records hold")


class _Rows:
    """tasks.jsonl's rows, batch by batch (in the chain's batch order)."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self._it = (row for _, row in _lines(archive, m.TASKS))
        self._next = next(self._it, None)

    def take(self, number: int) -> list[dict[str, Any]]:
        rows = []
        while self._next is not None and self._next.get("batch") == number:
            rows.append(self._next)
            self._next = next(self._it, None)
        return rows

    @property
    def left(self) -> dict[str, Any] | None:
        return self._next


def _check_rows_against(rows: list[dict[str, Any]], finals: dict[str, Any], attempts: dict[str, Any]) -> None:
    """A batch's task rows say what its chained records hold: outcome and request IDs."""
    for row in rows:
        task_id = str(row.get("task_id"))
        stored = finals.get(task_id)
        if any(is_masked(split_seq(x)[0]) for x in [stored or "", *str(attempts.get(task_id, "")).split("\n")]):
            continue  # a record that held a secret is chained by its digest: its row is masked
        final = FinalOutcome.from_json(split_seq(stored)[0]).outcome.value if stored else "pending"
        if row.get("outcome") != final:
            raise BundleProblemError(f"{m.TASKS}: task {task_id} says {row.get('outcome')}, its chained record {final}")
        lines = [split_seq(x)[0] for x in str(attempts.get(task_id, "")).split("\n") if x]
        ids = [a.request_id for a in map(Attempt.from_json, lines) if a.request_id]
        if row.get("request_ids") != ids:
            raise BundleProblemError(f"{m.TASKS}: task {task_id}'s request IDs differ from its chained attempts'")
    if stray := sorted((set(finals) | set(attempts)) - {str(r.get("task_id")) for r in rows}):
        raise BundleProblemError(f"{m.CHAIN}: task {stray[0]} has chained records but no row in {m.TASKS}")
