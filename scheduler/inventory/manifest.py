"""Manifests: a JSON-lines or CSV file of tasks, streamed line by line (:func:`read_manifest`).

A bad line is yielded as :class:`~scheduler.inventory.items.Rejected` and never stops the lines
after it.

Manifest rules:

- Format: ``.jsonl``/``.ndjson`` is JSON lines (one object per line), ``.csv`` is CSV with a
  header row; any other name is sniffed from the first non-blank byte (``{`` means JSON lines,
  ``[`` is refused as a JSON array, anything else is CSV).
- Fields: ``project_id``, ``share_id`` and ``task_id`` are required and must be plain IDs
  (:func:`worker.ids.explain`); ``status``, ``type`` and ``end_time`` are optional. The other
  fields of the API's task object (``start_time``, ``src_target``, ``dest_target``,
  ``src_prefix``, ``dest_prefix``, ``message``) are accepted and ignored, so that a saved
  listing can serve as a manifest. Any other field is an error: in a CSV header it makes the
  whole file unusable (:class:`ManifestError`), in a JSON line it rejects that line. A typo such
  as ``stauts`` must not silently turn a filter off.
- ``project_id`` falls back to ``default_project_id`` only when it is absent entirely (no CSV
  column, or no key in that JSON object). A present but empty or invalid value is rejected.
- An empty optional field (``""`` or JSON ``null``) means "unknown". ``status`` must be one of
  SUCCESS, FAIL, DOING, DELETING and ``type`` one of the API's types, else the line is
  rejected. A present but unparsable ``end_time`` is *not* rejected: the task is kept with
  ``end_time=None`` ("unknown"), which the policy never treats as old.
- Lines: read as bytes and decoded one by one, so one invalid UTF-8 line is rejected alone.
  CRLF, a UTF-8 BOM and a last line without a newline are handled; blank lines are skipped.
  Lines longer than :data:`MAX_LINE_BYTES` are rejected without being held whole in memory; a
  field longer than :data:`MAX_FIELD_CHARS` rejects its line; NUL bytes reject their line.
  A CSV record must fit on one line (no ID, status, type or time contains a newline).
- Line numbers are 1-based physical line numbers, header and blank lines included.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal

from scheduler.inventory.items import RAW_CHARS, STATUSES, TYPES, InventoryItem, Rejected, printable
from worker.errors import InputError
from worker.ids import check_project_id, explain, show_value
from worker.models import TaskInfo, parse_time

MAX_LINE_BYTES: Final = 64 * 1024
MAX_FIELD_CHARS: Final = 4096

REQUIRED_FIELDS: Final = ("project_id", "share_id", "task_id")
OPTIONAL_FIELDS: Final = ("status", "type", "end_time")
#: The rest of the API's task object: accepted (a saved listing is a valid manifest) and ignored.
IGNORED_FIELDS: Final = ("start_time", "src_target", "dest_target", "src_prefix", "dest_prefix", "message")
KNOWN_FIELDS: Final = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS + IGNORED_FIELDS)

_BOM: Final = b"\xef\xbb\xbf"
_BLANK: Final = b" \t\r\n"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Internal: why a line is refused (a distinct type, so a str result is always data)."""

    reason: str


class ManifestError(InputError):
    """The manifest as a whole cannot be used (unreadable file, unusable header)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_manifest(
    path: Path, *, default_project_id: str | None = None, only_default_project: bool = False
) -> Iterator[InventoryItem]:
    """Stream the tasks of a JSON-lines or CSV manifest; see the module docstring for the rules.

    With ``only_default_project``, a line naming another project than ``default_project_id`` is
    refused with its line number (the service deletes in one configured project).

    Problems with the file as a whole raise :class:`ManifestError` when iteration starts, before
    any item is yielded; an invalid ``default_project_id`` raises
    :class:`~worker.ids.InvalidIdError`.
    """
    if default_project_id is not None:
        check_project_id(default_project_id)
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise ManifestError(path, f"cannot open: {exc.strerror or exc}") from None
    with stream:
        kind = _manifest_kind(path, stream)
        lines = _physical_lines(stream)
        if kind == "jsonl":
            yield from _read_jsonl(str(path), lines, _Project(default_project_id, only_default_project))
        else:
            yield from _read_csv(path, lines, _Project(default_project_id, only_default_project))


def _manifest_kind(path: Path, stream: BinaryIO) -> Literal["jsonl", "csv"]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    first = b""
    chunk = stream.read(4096).removeprefix(_BOM)
    while chunk and not (first := chunk.lstrip(_BLANK)[:1]):
        chunk = stream.read(4096)
    stream.seek(0)
    if first == b"[":
        raise ManifestError(path, "looks like a JSON array; use JSON lines (one object per line) or CSV")
    return "jsonl" if first == b"{" else "csv"


def _physical_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (1-based number, content without terminator, too_long); too-long content is a prefix."""
    number = 0
    while chunk := stream.readline(MAX_LINE_BYTES + 2):
        number += 1
        overflow = len(chunk) == MAX_LINE_BYTES + 2 and not chunk.endswith(b"\n")
        if number == 1:
            chunk = chunk.removeprefix(_BOM)
        if overflow:
            head = chunk[: RAW_CHARS + 1]  # one byte over, so the shown raw ends in '...'
            # Skip the rest in bounded reads: a 2 GB line must not be held whole.
            while chunk and not chunk.endswith(b"\n"):
                chunk = stream.readline(MAX_LINE_BYTES)
            yield number, head, True
            continue
        content = chunk.removesuffix(b"\n").removesuffix(b"\r")
        if len(content) > MAX_LINE_BYTES:
            yield number, content[: RAW_CHARS + 1], True
        else:
            yield number, content, False


def _decode(content: bytes, too_long: bool) -> str | Rejection:
    if too_long:
        return Rejection(f"line is longer than {MAX_LINE_BYTES} bytes")
    if b"\x00" in content:
        return Rejection("contains a NUL byte")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(f"invalid UTF-8 at byte {exc.start + 1}")


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of two equal keys; a manifest must not say two things at once.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


# One decoder for every line: json.loads would build a new one per call when given a hook.
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def _parse_json_object(text: str) -> dict[str, object] | Rejection:
    try:
        value = _DECODER.decode(text)
    except _DuplicateKeyError as exc:
        return Rejection(f"duplicate key {show_value(exc.key)}")
    except json.JSONDecodeError as exc:
        return Rejection(f"not valid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return Rejection("not valid JSON: nested too deeply")
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        return Rejection(f"not valid JSON: {str(exc).split(':')[0]}")
    if not isinstance(value, dict):
        return Rejection(f"not a JSON object (got {_json_kind(value)})")
    unknown = [key for key in value if key not in KNOWN_FIELDS]
    if unknown:
        return Rejection(f"unknown key {', '.join(show_value(key, 40) for key in unknown[:3])}")
    return value


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _read_jsonl(source: str, lines: Iterator[tuple[int, bytes, bool]], project: _Project) -> Iterator[InventoryItem]:
    for number, content, too_long in lines:
        if not too_long and not content.strip(_BLANK):
            continue
        text = _decode(content, too_long)
        fields = _parse_json_object(text) if isinstance(text, str) else text
        result = fields if isinstance(fields, Rejection) else _task_from_fields(fields, project)
        if isinstance(result, Rejection):
            yield Rejected(source, number, result.reason, printable(content))
        else:
            yield result


def _read_csv(path: Path, lines: Iterator[tuple[int, bytes, bool]], project: _Project) -> Iterator[InventoryItem]:
    source = str(path)
    header: list[str] | None = None
    for number, content, too_long in lines:
        if not too_long and not content.strip(_BLANK):
            continue
        text = _decode(content, too_long)
        row = _parse_csv_line(text) if isinstance(text, str) else text
        if header is None:
            if isinstance(row, Rejection):
                raise ManifestError(path, f"line {number}: header: {row.reason}")
            header = _check_header(path, number, row, project.default)
            continue
        result: TaskInfo | Rejection
        if isinstance(row, Rejection):
            result = row
        elif len(row) != len(header):
            result = Rejection(f"has {len(row)} fields, the header has {len(header)}")
        else:
            result = _task_from_fields(dict(zip(header, row, strict=True)), project)
        if isinstance(result, Rejection):
            yield Rejected(source, number, result.reason, printable(content))
        else:
            yield result


def _parse_csv_line(text: str) -> list[str] | Rejection:
    try:
        return next(csv.reader((text,), strict=True))
    except csv.Error as exc:
        return Rejection(f"not valid CSV: {exc}")


def _check_header(path: Path, number: int, row: list[str], default_project_id: str | None) -> list[str]:
    # Header names are the manifest's own vocabulary: surrounding spaces are harmless there.
    names = [name.strip() for name in row]
    problems: list[str] = []
    unknown = [name for name in names if name not in KNOWN_FIELDS]
    if unknown:
        shown = ", ".join(show_value(name, 40) for name in unknown[:3])
        problems.append(f"unknown column {shown} (known: {', '.join(sorted(KNOWN_FIELDS))})")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        problems.append(f"duplicate column {', '.join(show_value(name, 40) for name in duplicated)}")
    required = [n for n in REQUIRED_FIELDS if not (n == "project_id" and default_project_id is not None)]
    missing = [name for name in required if name not in names]
    if missing:
        hint = " (or give a default project)" if missing == ["project_id"] else ""
        problems.append(f"missing column {', '.join(missing)}{hint}")
    if problems:
        raise ManifestError(path, f"line {number}: header: {'; '.join(problems)}")
    return names


@dataclass(frozen=True, slots=True)
class _Project:
    default: str | None  # used when a line has no project_id at all
    only: bool  # refuse lines naming any other project


def _task_from_fields(fields: Mapping[str, object], project: _Project) -> TaskInfo | Rejection:
    """Build a task from one line's fields, or say why the line is refused."""
    for name, value in fields.items():
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            return Rejection(f"{name} is too long ({len(value)} characters, at most {MAX_FIELD_CHARS})")
    ids: dict[str, str] = {}
    for name in REQUIRED_FIELDS:
        if name in fields:
            value = fields[name]
        elif name == "project_id" and project.default is not None:
            value = project.default
        else:
            return Rejection(f"missing {name}")
        if (why := explain(value)) is not None:
            return Rejection(f"{name} {why}")
        ids[name] = str(value)
    if project.only and ids["project_id"] != project.default:
        return Rejection(f"project_id {ids['project_id']!r} is not the configured project {project.default!r}")
    status = _choice(fields, "status", STATUSES)
    if isinstance(status, Rejection):
        return status
    kind = _choice(fields, "type", TYPES)
    if isinstance(kind, Rejection):
        return kind
    return TaskInfo(
        project_id=ids["project_id"],
        share_id=ids["share_id"],
        task_id=ids["task_id"],
        status=status,
        type=kind,
        end_time=parse_time(fields.get("end_time")),  # unparsable: None, i.e. unknown, never old
        raw={key: value for key, value in fields.items() if isinstance(value, str)},
    )


def _choice(fields: Mapping[str, object], name: str, allowed: tuple[str, ...]) -> str | Rejection | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return Rejection(f"{name} must be a string, not {_json_kind(value)}")
    if value not in allowed:
        return Rejection(f"{name} {show_value(value, 40)} is not one of {', '.join(allowed)}")
    return value
