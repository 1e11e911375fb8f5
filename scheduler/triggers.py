"""The JSON schemas of queue-message triggers, validated strictly.

Other systems send ``sfs.start_purge`` or ``sfs.delete_tasks`` by name with keyword arguments
that match these models. Anything else (unknown fields, wrong types, bad IDs, oversized lists)
is refused, recorded in the audit as a rejected trigger, and deletes nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from worker.ids import explain

MAX_EXPLICIT_TASKS = 10_000

IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Note = Annotated[str, StringConstraints(max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PolicyInput(_Strict):
    """The policy fields a trigger may set (each optional; settings fill the rest)."""

    older_than: str | None = None
    statuses: list[str] | None = None
    types: list[str] | None = None
    shares: list[str] | None = None
    max_deletions: int | None = Field(None, ge=0)
    protected_task_ids: list[str] | None = None
    protected_share_ids: list[str] | None = None
    name: Note | None = None


class StartPurge(_Strict):
    """``sfs.start_purge``: plan and run a purge of the configured shares by a policy."""

    policy: PolicyInput = PolicyInput()
    dry_run: bool = False
    idempotency_key: IdempotencyKey | None = None
    requested_by: Note | None = None


class TaskRef(_Strict):
    share_id: str
    task_id: str

    @field_validator("share_id", "task_id")
    @classmethod
    def _plain(cls, value: str) -> str:
        reason = explain(value)
        if reason:
            raise ValueError(f"ID {reason}")
        return value


class DeleteTasks(_Strict):
    """``sfs.delete_tasks``: delete an explicit list of tasks (each shown first, and skipped unless finished)."""

    tasks: list[TaskRef] = Field(min_length=1, max_length=MAX_EXPLICIT_TASKS)
    dry_run: bool = False
    idempotency_key: IdempotencyKey | None = None
    requested_by: Note | None = None
    reason: Note | None = None


def explain_error(error: ValidationError) -> str:
    """All problems of a message on one line, each with where it is."""
    parts = []
    for item in error.errors()[:20]:
        where = ".".join(str(p) for p in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    more = len(error.errors()) - 20
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def schemas() -> dict[str, Any]:
    """JSON Schemas of the trigger messages (printed by ``sfs-cleanup triggers schema``)."""
    return {"sfs.start_purge": StartPurge.model_json_schema(), "sfs.delete_tasks": DeleteTasks.model_json_schema()}
