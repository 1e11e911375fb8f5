"""Tasks to load into a fake API mid-test (shares added after a run, other projects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any


def old_tasks(share_id: str, n: int) -> list[dict[str, Any]]:
    """``n`` export tasks of ``share_id`` that ended 30 days ago: eligible under any default policy."""
    ended = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S")
    return [
        {"share_id": share_id, "task_id": f"{share_id[:8]}{k:024x}", "status": "SUCCESS", "type": "export",
         "end_time": ended, "start_time": ended}
        for k in range(n)
    ]  # fmt: skip
