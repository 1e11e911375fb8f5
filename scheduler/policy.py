"""The selection policy: which tasks a run may delete, and why every other task is kept.

A task is selected only if every rule holds. They are checked in this order, and the first
that fails is the reason reported for the task (a small fixed vocabulary, for dry runs):

1. its status is one of ``statuses`` (only SUCCESS and FAIL may ever be listed; a missing
   status is never selected) ............................. ``status:<STATUS>``, ``status:unknown``
2. its type is one of ``types`` (empty: any type) ...... ``type:<type>``, ``type:unknown``
3. its share is one of ``shares`` (empty: any share) .... ``share_not_in_policy``
4. its ``end_time`` is known (even with ``older_than: 0s``) ... ``end_time_unknown``
5. it ended at least ``older_than`` ago (``end_time <= now - older_than``) ... ``too_young``
6. its share is not protected ........................... ``protected_share``
7. the task is not protected (by task ID alone) ......... ``protected_task``
8. fewer than ``max_deletions`` tasks were selected before it ... ``over_cap``

Entries planned without the status and age rules (an explicit list, a replay, a bare manifest
entry: their task is shown just before its delete) go through :meth:`Selector.admit`, rules 6
to 8 only, against the same count: the cap bounds a run whatever the mix of its sources.

Protection is checked after the selection rules so that its counts say how many tasks
protection actually saved. An unrecognised status or type string is reported as
``status:other`` / ``type:other`` so that the vocabulary stays bounded.

Sources (:func:`policy_from_sources`): flags override the policy file, which overrides the
settings. The protection lists are the exception: they are the union of all three, so a
protection set in the settings can never be overridden away.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import yaml
from pydantic import BaseModel, Field, Strict, ValidationError, field_validator

from worker.durations import parse_duration
from worker.errors import ProblemsError
from worker.ids import explain, show_value
from worker.models import FINISHED_STATUSES, TaskInfo, TaskStatus, TaskType
from worker.textfile import read_text, yaml_problem

if TYPE_CHECKING:
    from worker.settings import Settings

MAX_POLICY_BYTES: Final = 1024 * 1024
PROTECTION_FIELDS: Final = ("protected_task_ids", "protected_share_ids")

_FINISHED: Final = tuple(sorted(s.value for s in FINISHED_STATUSES))
_STATUS_VALUES: Final = frozenset(s.value for s in TaskStatus)
_TYPE_VALUES: Final = frozenset(t.value for t in TaskType)


class PolicyError(ProblemsError):
    """Every problem with a policy, one line each, naming where it came from and the field."""

    title = "invalid policy"


def _as_list(value: Any) -> Any:
    # "SUCCESS,FAIL" is accepted like the settings' comma lists; lists pass through unchanged.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _dedupe(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


class Policy(BaseModel, extra="forbid", frozen=True):
    """Which tasks a run may delete. Lists are tuples so that a policy is truly immutable."""

    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    statuses: tuple[str, ...] = ("SUCCESS", "FAIL")
    types: tuple[str, ...] = ()
    older_than: str = "7d"
    shares: tuple[str, ...] = ()
    protected_task_ids: tuple[str, ...] = ()
    protected_share_ids: tuple[str, ...] = ()
    # Strict: YAML's `yes` or "100" must not quietly become a cap.
    max_deletions: Annotated[int, Strict()] | None = Field(None, ge=0)

    @field_validator("statuses", "types", "shares", *PROTECTION_FIELDS, mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for status in value:
            if status in (TaskStatus.DOING, TaskStatus.DELETING):
                raise ValueError(
                    f"{status} can never be selected: a purge deletes finished tasks only ({', '.join(_FINISHED)})"
                )
            if status not in _FINISHED:
                raise ValueError(f"unknown status {show_value(status, 40)}; allowed: {', '.join(_FINISHED)}")
        if not value:
            raise ValueError(f"must name at least one of {', '.join(_FINISHED)}")
        return _dedupe(value)

    @field_validator("types")
    @classmethod
    def _types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for kind in value:
            if kind not in _TYPE_VALUES:
                allowed = ", ".join(sorted(_TYPE_VALUES))
                raise ValueError(f"unknown type {show_value(kind, 40)}; allowed: {allowed} (empty: all)")
        return _dedupe(value)

    @field_validator("shares", *PROTECTION_FIELDS)
    @classmethod
    def _ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if (why := explain(item)) is not None:
                raise ValueError(f"ID {show_value(item, 40)} {why}")
        return _dedupe(value)

    @field_validator("older_than")
    @classmethod
    def _older_than(cls, value: str) -> str:
        parse_duration(value)  # its ValueError names the accepted forms
        return value

    @property
    def older_than_delta(self) -> timedelta:
        return parse_duration(self.older_than)


# --- Loading ------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):
            break  # construct_mapping reports "found unhashable key" with its position
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {show_value(key, 40)}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _error_lines(source: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
        field = where.lstrip(".") or "policy"
        if item["type"] == "extra_forbidden":
            message = f"unknown field (allowed: {', '.join(Policy.model_fields)})"
        else:
            message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {field}: {message}")
    return lines


def _validate(data: Mapping[str, Any], source: str) -> Policy:
    try:
        return Policy.model_validate(dict(data))
    except ValidationError as exc:
        raise PolicyError(_error_lines(source, exc)) from None


def parse_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise PolicyError([f"{path}: unsupported file type {suffix or '(none)'!r}; use .yaml, .yml or .toml"])
    text = read_text(path, MAX_POLICY_BYTES, "policy file", PolicyError)
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError([f"{path}: not valid TOML: {exc}"]) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise PolicyError([f"{path}: not valid YAML: {yaml_problem(exc)}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([f"{path}: not valid YAML: {str(exc).splitlines()[0]}"]) from None


def load_policy_file(path: Path) -> Policy:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) policy; an empty YAML file is the defaults.

    Raises :class:`PolicyError` with one line per problem, each naming the file and the field.
    Fields the file does not set stay unset (``model_fields_set``), so that lower layers show
    through in :func:`policy_from_sources`.
    """
    data = parse_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError([f"{path}: must be a mapping of policy fields, not {type(data).__name__}"])
    odd = [key for key in data if not isinstance(key, str)]
    if odd:
        raise PolicyError([f"{path}: {show_value(key, 40)}: field names must be strings" for key in odd])
    return _validate(data, str(path))


def _settings_fields(settings: Settings) -> dict[str, Any]:
    return {
        "statuses": settings.statuses,
        "types": settings.types,
        "older_than": settings.older_than,
        # A targets file names each target's shares: SHARE_IDS is the one-project shorthand's.
        "shares": [] if settings.targets_file else settings.share_ids,
        "protected_task_ids": settings.protected_task_ids,
        "protected_share_ids": settings.protected_share_ids,
        "max_deletions": settings.max_deletions,
    }


def policy_from_sources(
    *, settings: Settings, file: Path | None, overrides: Mapping[str, Any], named: Policy | None = None
) -> Policy:
    """The run's policy: ``overrides`` (flags; ``None`` values ignored) > policy file > ``named``
    (a policy of the policies file, :mod:`scheduler.policies`) > settings.

    ``file`` defaults to ``settings.policy_file``. The settings' ``share_ids`` are the default
    ``shares``. Each source is validated on its own, so every error names its source (``flags``,
    the file's path, or ``settings``) and the field; all errors are raised together as one
    :class:`PolicyError`. Protection lists are merged (union of all sources), never overridden.
    """
    problems: list[str] = []
    layers: list[Policy] = []
    sources: list[tuple[str, Mapping[str, Any] | Path]] = [("settings", _settings_fields(settings))]
    if named is not None:
        sources.append((f"policy {named.name or '(named)'}", named.model_dump(include=named.model_fields_set)))
    path = file if file is not None else (Path(settings.policy_file) if settings.policy_file else None)
    if path is not None:
        sources.append((str(path), path))
    sources.append(("flags", {key: value for key, value in overrides.items() if value is not None}))
    for name, source in sources:
        try:
            layers.append(load_policy_file(source) if isinstance(source, Path) else _validate(source, name))
        except PolicyError as exc:
            problems.extend(exc.lines)
    if problems:
        raise PolicyError(problems)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer.model_dump(include=layer.model_fields_set))
    for field in PROTECTION_FIELDS:
        merged[field] = tuple(item for layer in layers for item in getattr(layer, field))
    return _validate(merged, "policy")


# --- Selection ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    selected: bool
    reason: str


SELECTED: Final = Decision(True, "selected")
# The vocabulary is bounded (see the module docstring), so one shared object per reason suffices.
_DECISIONS: dict[str, Decision] = {}


def _keep(reason: str) -> Decision:
    decision = _DECISIONS.get(reason)
    if decision is None:
        decision = _DECISIONS[reason] = Decision(False, reason)
    return decision


def _label(value: str | None, known: frozenset[str]) -> str:
    if value is None:
        return "unknown"
    return value if value in known else "other"


class Selector:
    """Applies a :class:`Policy` to tasks one at a time; no I/O.

    :meth:`decide` is deterministic for a given sequence of tasks, but not stateless: it counts
    selections for the cap and every decision's reason for :meth:`summary`. A task decided twice
    is counted twice; de-duplicating the inventory is the caller's job.
    """

    def __init__(self, policy: Policy, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self.policy = policy
        self.now = now
        self.cutoff = now - policy.older_than_delta
        self._statuses = frozenset(policy.statuses)
        self._types = frozenset(policy.types)
        self._shares = frozenset(policy.shares)
        self._protected_tasks = frozenset(policy.protected_task_ids)
        self._protected_shares = frozenset(policy.protected_share_ids)
        self._selected = 0
        self._counts: Counter[str] = Counter()

    @property
    def selected_count(self) -> int:
        return self._selected

    def decide(self, task: TaskInfo) -> Decision:
        decision = self._judge(task)
        self._counts[decision.reason] += 1
        return decision

    def _judge(self, task: TaskInfo) -> Decision:
        if task.status not in self._statuses:
            return _keep(f"status:{_label(task.status, _STATUS_VALUES)}")
        if self._types and task.type not in self._types:
            return _keep(f"type:{_label(task.type, _TYPE_VALUES)}")
        if self._shares and task.share_id not in self._shares:
            return _keep("share_not_in_policy")
        if task.end_time is None:
            return _keep("end_time_unknown")
        ended = task.end_time if task.end_time.tzinfo else task.end_time.replace(tzinfo=UTC)  # API: UTC
        if ended > self.cutoff:
            return _keep("too_young")
        if (protected := self.is_protected(task.share_id, task.task_id)) is not None:
            return _keep(protected)
        return self._take_slot()

    def admit(self, share_id: str, task_id: str) -> Decision:
        """Decide an entry planned without the status and age rules (shown before its delete).

        Only protection and the cap apply, and the cap is the one :meth:`decide` counts against.
        """
        protected = self.is_protected(share_id, task_id)
        decision = _keep(protected) if protected is not None else self._take_slot()
        self._counts[decision.reason] += 1
        return decision

    def _take_slot(self) -> Decision:
        cap = self.policy.max_deletions
        if cap is not None and self._selected >= cap:
            return _keep("over_cap")
        self._selected += 1
        return SELECTED

    def is_protected(self, share_id: str, task_id: str) -> str | None:
        """``"protected_share"``, ``"protected_task"`` or ``None``: for the recheck just before a delete."""
        if share_id in self._protected_shares:
            return "protected_share"
        if task_id in self._protected_tasks:
            return "protected_task"
        return None

    def summary(self) -> dict[str, int]:
        """Decisions so far by reason, ``selected`` first, then the reasons in name order."""
        ordered = sorted(self._counts.items(), key=lambda item: (item[0] != "selected", item[0]))
        return dict(ordered)
