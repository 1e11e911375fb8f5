"""The live listing: every task of the configured shares, streamed page by page (:func:`read_live`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Protocol

from scheduler.inventory.items import STATUSES, TYPES, InventoryItem, Rejected, printable
from worker.ids import check_project_id, check_share_id, explain, show_value
from worker.models import TaskInfo


class TaskLister(Protocol):
    """Lists every task of one share, paging internally (implemented by the API client)."""

    def list_tasks(
        self, share_id: str, *, status: str | None = None, type: str | None = None
    ) -> Iterator[TaskInfo]: ...


def read_live(
    lister: TaskLister,
    project_id: str,
    share_ids: Sequence[str],
    *,
    statuses: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
) -> Iterator[InventoryItem]:
    """Stream every task of every share (each once, in the order given), all pages.

    When ``statuses`` (or ``types``) names exactly one value, it is passed to the API as a
    server-side filter, which means fewer pages; with several values (or none) everything is
    listed and the policy filters. The policy checks status and type again either way, so a
    server that ignores a filter cannot widen a selection.

    Listed tasks are checked like manifest lines: a task whose ID is not a plain ID, whose
    share or project differs from the one listed, or whose status or type is unknown is yielded
    as :class:`Rejected` (``source`` is ``live:<share_id>``, ``line`` its 1-based position in
    that share's listing). Listing errors propagate: the caller decides.
    """
    check_project_id(project_id)
    shares = list(dict.fromkeys(share_ids))  # a share named twice is listed once
    for share_id in shares:
        check_share_id(share_id)
    status = _single(statuses, "statuses")
    kind = _single(types, "types")
    for share_id in shares:
        source = f"live:{share_id}"
        listed = lister.list_tasks(share_id, status=status, type=kind)
        for position, task in enumerate(listed, start=1):
            reason = _check_listed(task, project_id, share_id)
            if reason is None:
                yield task
            else:
                yield Rejected(source, position, reason, printable(_describe(task)))


def _single(values: Sequence[str] | None, name: str) -> str | None:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not one string")
    distinct = set(values or ())
    return distinct.pop() if len(distinct) == 1 else None


def _check_listed(task: TaskInfo, project_id: str, share_id: str) -> str | None:
    if (why := explain(task.task_id)) is not None:
        return f"task_id {why}"
    if task.share_id != share_id:
        return f"listed under share {share_id} but names share {show_value(task.share_id)}"
    if task.project_id != project_id:
        return f"listed under project {project_id} but names project {show_value(task.project_id)}"
    for name, value, allowed in (("status", task.status, STATUSES), ("type", task.type, TYPES)):
        if value is not None and value not in allowed:
            return f"{name} {show_value(value, 40)} is not one of {', '.join(allowed)}"
    return None


def _describe(task: TaskInfo) -> str:
    end = task.end_time.isoformat() if task.end_time else None
    fields = {"task_id": task.task_id, "share_id": task.share_id, "status": task.status}
    return json.dumps({**fields, "type": task.type, "end_time": end}, ensure_ascii=False)
