"""Reading a targets file: one line per problem (file, target, field), and its JSON Schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema

from worker.targets.model import _SLUG, MAX_TARGETS_BYTES, TargetsError, TargetSet
from worker.textfile import read_text, yaml_problem


def load_targets(path: str | Path) -> TargetSet:
    """Read and check a targets file; :class:`TargetsError` with one line per problem."""
    source = str(path)
    text = read_text(path, MAX_TARGETS_BYTES, "targets file", TargetsError)
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise TargetsError([f"{source}: not valid YAML: {yaml_problem(exc)}"]) from None
    except yaml.YAMLError:
        raise TargetsError([f"{source}: not valid YAML"]) from None
    if not isinstance(data, dict) or "targets" not in data:
        raise TargetsError([f"{source}: a targets file is a mapping with one key, 'targets: [target, ...]'"])
    try:
        return TargetSet.model_validate(data)
    except ValidationError as exc:
        raise TargetsError(_error_lines(source, data, exc)) from None


def _error_lines(source: str, data: Any, error: ValidationError) -> list[str]:
    lines: list[str] = []
    for item in error.errors(include_input=False):
        loc = list(item["loc"])
        where = "file"
        if loc[:1] == ["targets"] and len(loc) > 1 and isinstance(loc[1], int):
            where = f"target {_name_at(data, loc[1])}"
            loc = loc[2:]
        # A union's branch names ('literal['agency']', 'EnvCredentials') say nothing to a user.
        shown = [str(part) for part in loc if not _is_branch(part)]
        field = ".".join(shown) or "targets"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "string_type":
            message = "must be a string: quote it, or YAML reads an ID of digits as a number"
        line = f"{source}: {where}: {field}: {message}"
        if line not in lines:
            lines.append(line)
    return lines


def _is_branch(part: object) -> bool:
    return isinstance(part, str) and (part.startswith(("literal[", "function-")) or part[:1].isupper())


def _name_at(data: Any, index: int) -> str:
    try:
        name = data["targets"][index]["name"]
    except (KeyError, IndexError, TypeError):
        name = None
    if isinstance(name, str) and re.fullmatch(_SLUG, name):
        return repr(name)
    return f"#{index + 1}"


def schema() -> dict[str, Any]:
    """JSON Schema of a targets file (``sfs-cleanup targets schema``)."""
    refs, defs = models_json_schema([(TargetSet, "validation")])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sfs-turbo-cleanup targets file",
        **refs[(TargetSet, "validation")],
        **defs,
    }
