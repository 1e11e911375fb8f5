"""Plain data shared by the client, the inventory, the policy and the audit."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class TaskStatus(StrEnum):
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"
    DOING = "DOING"
    DELETING = "DELETING"


class TaskType(StrEnum):
    IMPORT = "import"
    IMPORT_METADATA = "import_metadata"
    PRELOAD = "preload"
    EXPORT = "export"


#: Statuses a purge may ever select; running and deleting tasks are never touched.
FINISHED_STATUSES = frozenset({TaskStatus.SUCCESS, TaskStatus.FAIL})


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One HPC-cache task as the inventory knows it. Fields the source lacks are ``None``."""

    project_id: str
    share_id: str
    task_id: str
    status: str | None = None
    type: str | None = None
    end_time: datetime | None = None
    raw: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def parse_time(value: object) -> datetime | None:
    """Parse the API's ``YYYY-MM-DDTHH:MM:SS`` (UTC) or ISO-8601 with a zone.

    Anything else is ``None`` ("unknown"), which the policy never treats as old.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
