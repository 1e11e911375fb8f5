"""One HPC-cache task as the fake stores it, and its JSON form on the wire and in seed files."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

TYPES: Final = ("import", "import_metadata", "preload", "export")
STATUSES: Final = ("SUCCESS", "FAIL", "DOING", "DELETING")
TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"  # what Terraform parses: UTC, no zone
API_FIELDS: Final = (
    "task_id",
    "type",
    "status",
    "src_target",
    "dest_target",
    "src_prefix",
    "dest_prefix",
    "start_time",
    "end_time",
    "message",
)


@dataclass(slots=True)
class Task:
    share_id: str
    task_id: str
    type: str
    status: str
    src_target: str = ""
    dest_target: str = ""
    src_prefix: str = ""
    dest_prefix: str = ""
    # None: the field is left out of the answer (a task with no time at all, not even "").
    start_time: str | None = None
    end_time: str | None = None
    message: str = ""

    def to_api(self) -> dict[str, str]:
        """The task as list and show answer it: every field a string, absent times left out."""
        out: dict[str, str] = {}
        for name in API_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_record(self) -> dict[str, Any]:
        """One line of a seed file: the API form plus the share it belongs to."""
        return {"share_id": self.share_id, **self.to_api()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Task:
        """Read one seed-file line; missing text fields become "", missing times stay absent."""
        missing = [name for name in ("share_id", "task_id") if not record.get(name)]
        if missing:
            raise ValueError(f"a task record needs {' and '.join(missing)}")

        def text(name: str, default: str = "") -> str:
            value = record.get(name, default)
            return default if value is None else str(value)

        def maybe(name: str) -> str | None:
            value = record.get(name)
            return None if value is None else str(value)

        src_target = text("src_target")
        src_prefix = text("src_prefix")
        return cls(
            share_id=str(record["share_id"]),
            task_id=str(record["task_id"]),
            type=text("type", "import"),
            status=text("status", "SUCCESS"),
            src_target=src_target,
            dest_target=text("dest_target", src_target),
            src_prefix=src_prefix,
            dest_prefix=text("dest_prefix", src_prefix),
            start_time=maybe("start_time"),
            end_time=maybe("end_time"),
            message=text("message"),
        )


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str | None) -> datetime | None:
    """The zone-less API form (UTC) or ISO-8601 with a zone; anything else is unknown (None)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
