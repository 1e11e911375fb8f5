"""The API's task bodies read into :class:`~worker.models.TaskInfo` (a show's answer, a listing's items)."""

from __future__ import annotations

import json
from typing import Any

from worker.models import TaskInfo, parse_time


def json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def task_from(project_id: str, share_id: str, item: dict[str, Any]) -> TaskInfo:
    def text(key: str) -> str | None:
        value = item.get(key)
        return str(value) if value is not None else None

    return TaskInfo(
        project_id=project_id,
        share_id=share_id,
        task_id=str(item.get("task_id", "")),
        status=text("status"),
        type=text("type"),
        end_time=parse_time(item.get("end_time")),
        raw={k: str(v) for k, v in item.items() if isinstance(v, str | int | float)},
    )
