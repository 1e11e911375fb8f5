"""Policies as code: several named policies in one file, each with its own schedule.

::

    # SFS_CLEANUP_POLICIES_FILE=/etc/sfs-cleanup/policies.yaml
    policies:
      finished-imports:
        types: [import, import_metadata]
        older_than: 7d
        max_deletions: 5000
        schedule: "0 2 * * *"          # its own nightly slot (beat, when the schedule is enabled)
      old-exports:
        types: [export]
        older_than: 30d
        schedule: "30 3 * * 0"
        timezone: Europe/Berlin          # default: SFS_CLEANUP_SCHEDULE_TIMEZONE

A policy is chosen by name from the schedule (each scheduled policy is its own beat entry, with
its own slot key), from triggers (``policy_name`` of ``sfs.start_purge``) and from the CLI
(``purge --policy-name``). Its fields sit between the settings and the flags: settings < named
policy < policy file < flags, protection lists merged from all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic.json_schema import models_json_schema

from scheduler.cron import Schedule, cron_schedule
from scheduler.policy import Policy, PolicyError, parse_file
from scheduler.triggers import PolicyName
from worker.cronspec import check_timezone
from worker.settings import Settings

#: The fields of a named policy that are not selection rules (they say when, not what).
SCHEDULE_FIELDS = ("schedule", "timezone")


class NamedPolicy(Policy, extra="forbid", frozen=True):
    """A policy with, optionally, its own schedule."""

    schedule: str | None = Field(None, description="Cron expression (5 fields) of this policy's purge.")
    timezone: str | None = Field(None, description="Time zone of the schedule; default the settings'.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            cron_schedule(value, "UTC")  # its ValueError says what is wrong
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    def selection(self, name: str) -> Policy:
        """The selection rules alone, named, with only the fields the file set (so that lower
        layers show through)."""
        fields = self.model_dump(include=self.model_fields_set - set(SCHEDULE_FIELDS))
        return Policy.model_validate(fields | {"name": fields.get("name") or name})


class PolicySet(BaseModel, extra="forbid", frozen=True):
    """A policies file: named policies."""

    policies: dict[PolicyName, NamedPolicy] = Field(min_length=1)

    def get(self, name: str, source: str) -> NamedPolicy:
        try:
            return self.policies[name]
        except KeyError:
            known = ", ".join(sorted(self.policies))
            raise PolicyError([f"{source}: no policy named {name[:80]!r} (the file has: {known})"]) from None

    def scheduled(self) -> dict[str, NamedPolicy]:
        return {name: p for name, p in self.policies.items() if p.schedule}


def is_policy_set(data: Any) -> bool:
    return isinstance(data, dict) and "policies" in data


def load_policy_set(path: Path) -> PolicySet:
    """Read a policies file; :class:`PolicyError` with one line per problem (file, policy, field)."""
    data = parse_file(path)
    if not is_policy_set(data):
        raise PolicyError([f"{path}: a policies file is a mapping with one key, 'policies: {{name: policy}}'"])
    try:
        return PolicySet.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_error_lines(str(path), exc)) from None


def _error_lines(source: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if loc[-1:] == ["[key]"]:
            loc, message = loc[:-1], "a policy name is lowercase letters, digits, '-' and '_' (1 to 63)"
        field = ".".join(loc) or "file"
        if item["type"] == "extra_forbidden":
            allowed = NamedPolicy.model_fields if len(item["loc"]) > 2 else PolicySet.model_fields
            message = f"unknown field (allowed: {', '.join(allowed)})"
        lines.append(f"{source}: {field}: {message}")
    return lines


def policies_of(settings: Settings) -> PolicySet | None:
    """The settings' policies file, or ``None`` when there is none."""
    return load_policy_set(Path(settings.policies_file)) if settings.policies_file else None


def named_policy(settings: Settings, name: str) -> Policy:
    """The selection rules of the named policy in ``SFS_CLEANUP_POLICIES_FILE``."""
    found = policies_of(settings)
    if found is None:
        raise PolicyError([f"policy {name[:80]!r}: SFS_CLEANUP_POLICIES_FILE is not set"])
    return found.get(name, str(settings.policies_file)).selection(name)


def validate_file(path: Path) -> dict[str, Any]:
    """What ``sfs-cleanup policy validate`` reports of a file of either kind."""
    data = parse_file(path)
    if is_policy_set(data):
        found = load_policy_set(path)
        return {
            "file": str(path),
            "kind": "policies",
            "policies": {name: p.model_dump(mode="json", exclude_none=True) for name, p in found.policies.items()},
        }
    from scheduler.policy import load_policy_file

    single = load_policy_file(path)
    return {"file": str(path), "kind": "policy", "policy": single.model_dump(mode="json", exclude_none=True)}


def schema() -> dict[str, Any]:
    """JSON Schema of both file kinds (``sfs-cleanup policy schema``)."""
    refs, defs = models_json_schema([(PolicySet, "validation"), (Policy, "validation")])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sfs-turbo-cleanup policy file: named policies, or one policy",
        "oneOf": [refs[(PolicySet, "validation")], refs[(Policy, "validation")]],
        **defs,
    }


def schedules(settings: Settings) -> list[Schedule]:
    """The nightly purges beat sends when the schedule is enabled: one per named policy with a
    schedule (SFS_CLEANUP_POLICIES_FILE), or else the settings' own (SFS_CLEANUP_SCHEDULE_CRON)."""
    found = policies_of(settings)
    named = found.scheduled() if found is not None else {}
    if named:
        return [Schedule(name, str(p.schedule), p.timezone or settings.schedule_timezone) for name, p in named.items()]
    return [Schedule(None, settings.schedule_cron, settings.schedule_timezone)]


def schedule_of(settings: Settings, policy: str | None) -> Schedule:
    """The schedule a nightly message names (``policy``), or the settings' own."""
    if policy is None:
        return Schedule(None, settings.schedule_cron, settings.schedule_timezone)
    found = policies_of(settings)
    if found is None:
        raise PolicyError([f"policy {policy!r}: SFS_CLEANUP_POLICIES_FILE is not set"])
    p = found.get(policy, str(settings.policies_file))
    if not p.schedule:
        raise PolicyError([f"policy {policy!r} has no schedule"])
    return Schedule(policy, p.schedule, p.timezone or settings.schedule_timezone)
