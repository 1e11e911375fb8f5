"""The JSON schemas of queue-message triggers, validated strictly.

Other systems send ``sfs.start_purge`` or ``sfs.delete_tasks`` by name with keyword arguments
that match these models (``sfs.nightly_purge`` is what beat sends; an operator may send it too).
Anything else (unknown fields, wrong types, bad IDs, oversized lists, positional arguments, a
body that is not a Celery message) is refused, recorded in the audit as a rejected trigger
(event ``trigger_rejected``), and deletes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from worker.durations import parse_duration
from worker.ids import MAX_ID_LENGTH, explain

PolicyName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]

MAX_EXPLICIT_TASKS = 10_000
MAX_SHARES = 1_000

IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Note = Annotated[str, StringConstraints(max_length=200)]


def _plain_id(value: str) -> str:
    reason = explain(value)
    if reason:
        raise ValueError(f"ID {reason}")
    return value


#: A share or task ID as the API issues them; anything else (``../x``, ``a%2Fb``) is refused.
PlainId = Annotated[
    str,
    AfterValidator(_plain_id),
    WithJsonSchema({"type": "string", "pattern": f"^[A-Za-z0-9-]{{1,{MAX_ID_LENGTH}}}$"}),
]
Status = Literal["SUCCESS", "FAIL"]
TaskKind = Literal["import", "import_metadata", "preload", "export"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PolicyInput(_Strict):
    """The policy fields a trigger may set (each optional; settings fill the rest)."""

    older_than: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        None, description="Only tasks that ended longer ago than this: 7d, 12h, 90m, 30s, 1w2d."
    )
    statuses: list[Status] | None = Field(None, min_length=1, max_length=2)
    types: list[TaskKind] | None = Field(None, max_length=4, description="Empty or absent: every type.")
    shares: list[PlainId] | None = Field(
        None, max_length=MAX_SHARES, description="File systems to purge; absent: the configured ones."
    )
    max_deletions: int | None = Field(None, ge=0, description="Cap on deletions in this run.")
    protected_task_ids: list[PlainId] | None = Field(None, max_length=MAX_EXPLICIT_TASKS)
    protected_share_ids: list[PlainId] | None = Field(None, max_length=MAX_SHARES)
    name: Note | None = None

    @field_validator("older_than")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class StartPurge(_Strict):
    """``sfs.start_purge``: plan and run a purge of the configured shares by a policy."""

    policy: PolicyInput = PolicyInput()
    policy_name: PolicyName | None = Field(
        None, description="A named policy of SFS_CLEANUP_POLICIES_FILE; `policy` fields override it."
    )
    dry_run: bool = False
    idempotency_key: IdempotencyKey | None = Field(
        None, description="A second message with the same key (within 7 days) starts no second run."
    )
    requested_by: Note | None = None


class TaskRef(_Strict):
    share_id: PlainId
    task_id: PlainId


class DeleteTasks(_Strict):
    """``sfs.delete_tasks``: delete an explicit list of tasks (each shown first, and skipped unless finished)."""

    tasks: list[TaskRef] = Field(min_length=1, max_length=MAX_EXPLICIT_TASKS)
    dry_run: bool = False
    idempotency_key: IdempotencyKey | None = Field(
        None, description="A second message with the same key (within 7 days) starts no second run."
    )
    requested_by: Note | None = None
    reason: Note | None = None


class NightlyPurge(_Strict):
    """``sfs.nightly_purge``: the scheduled purge, one run per schedule slot.

    ``slot`` (ISO 8601; without an offset it is read in the schedule's time zone) names the
    schedule slot to run; it maps to the latest slot of the cron expression at or before it.
    Absent, the slot is the latest one at or before the time the job runs (what beat sends).
    Each named policy with a schedule has its own slots (and its own once-only key per slot).
    """

    slot: Annotated[str, StringConstraints(max_length=40)] | None = None
    policy: PolicyName | None = Field(
        None, description="The named policy whose schedule this is (absent: the settings' policy and schedule)."
    )

    @field_validator("slot")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"not an ISO 8601 time such as 2026-11-29T02:00:00Z: {value[:40]!r}") from None
        return value


def explain_error(error: ValidationError) -> str:
    """All problems of a message on one line, each with where it is."""
    parts = []
    for item in error.errors()[:20]:
        where = ".".join(str(p) for p in item["loc"]) or "message"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{where}: {message}")
    more = len(error.errors()) - 20
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def schemas() -> dict[str, Any]:
    """JSON Schemas of the trigger messages (printed by ``sfs-cleanup trigger-schemas``)."""
    return {
        "sfs.start_purge": StartPurge.model_json_schema(),
        "sfs.delete_tasks": DeleteTasks.model_json_schema(),
        "sfs.nightly_purge": NightlyPurge.model_json_schema(),
    }
