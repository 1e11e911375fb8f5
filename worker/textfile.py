"""Small input files (policies, targets): read bounded, decoded, with one line per problem."""

from __future__ import annotations

from pathlib import Path

import yaml

from worker.errors import ProblemsError


def read_text(path: str | Path, max_bytes: int, kind: str, error: type[ProblemsError]) -> str:
    """The file's text; ``error`` with one line naming the file when it cannot be read, is larger
    than ``max_bytes`` ("is this a {kind}?") or is not UTF-8 (a BOM is dropped)."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read(max_bytes + 1)
    except OSError as exc:
        raise error([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > max_bytes:
        raise error([f"{path}: larger than {max_bytes} bytes; is this a {kind}?"])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error([f"{path}: invalid UTF-8 at byte {exc.start + 1}"]) from None


def yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """What a YAML parser refused and where: ``problem (line L, column C)``."""
    mark = exc.problem_mark or exc.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{exc.problem or exc.context}{where}"
