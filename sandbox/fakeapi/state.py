"""The fake's task inventory and what deleting does to it.

A delete is asynchronous, as in the real service: the task shows ``DELETING`` for a while,
then is gone. Removal is lazy (a heap checked at each call) rather than one timer per task,
so thousands of deletes a second cost no more than a heap push each.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from sandbox.fakeapi.seed import Inventory, new_task
from sandbox.fakeapi.tasks import Task, format_time


class DeleteOutcome(Enum):
    ACCEPTED = "accepted"
    NOT_FOUND = "not_found"  # never existed, or someone else's delete is under way
    DUPLICATE = "duplicate"  # an earlier DELETE here was already accepted for it


@dataclass(frozen=True, slots=True)
class Page:
    tasks: list[Task]
    total: int


class TaskStore:
    def __init__(self, inventory: Inventory) -> None:
        self.project_id = inventory.project_id
        self.shares: dict[str, dict[str, Task]] = {share_id: {} for share_id in inventory.share_ids}
        self.add(inventory.tasks)
        # (share, task) -> when its DELETE was accepted: outlives the task, to spot duplicates.
        self.accepted: dict[tuple[str, str], float] = {}
        self._vanishing: list[tuple[float, str, str]] = []
        self._ids = random.Random()

    @property
    def share_ids(self) -> list[str]:
        return list(self.shares)

    def add(self, tasks: Iterable[Task], *, replace: bool = False) -> int:
        """Add (or overwrite) tasks; ``replace`` first empties the shares they belong to."""
        tasks = list(tasks)
        if replace:
            for share_id in {task.share_id for task in tasks}:
                self.shares[share_id] = {}
        for task in tasks:
            # A copy: deleting must not change the caller's inventory (tests compare against it).
            self.shares.setdefault(task.share_id, {})[task.task_id] = dataclasses.replace(task)
        return len(tasks)

    def expire(self, now: float) -> None:
        """Drop the tasks whose DELETING period has ended."""
        heap = self._vanishing
        while heap and heap[0][0] <= now:
            _, share_id, task_id = heapq.heappop(heap)
            tasks = self.shares.get(share_id)
            if tasks is not None:
                tasks.pop(task_id, None)

    def has_share(self, share_id: str) -> bool:
        return share_id in self.shares

    def get(self, share_id: str, task_id: str) -> Task | None:
        return self.shares[share_id].get(task_id)

    def page(self, share_id: str, offset: int, limit: int, task_type: str | None, status: str | None) -> Page:
        """One page in insertion order, plus how many tasks match the filters in all."""
        tasks = self.shares[share_id]
        if task_type is None and status is None:
            # No filter: slice without copying the whole share (listing a big share stays linear).
            return Page(list(itertools.islice(tasks.values(), offset, offset + limit)), len(tasks))
        matching = [
            task
            for task in tasks.values()
            if (task_type is None or task.type == task_type) and (status is None or task.status == status)
        ]
        return Page(matching[offset : offset + limit], len(matching))

    def delete(self, share_id: str, task_id: str, now: float, deleting_seconds: float) -> DeleteOutcome:
        key = (share_id, task_id)
        if key in self.accepted:
            return DeleteOutcome.DUPLICATE
        task = self.shares[share_id].get(task_id)
        if task is None or task.status == "DELETING":
            return DeleteOutcome.NOT_FOUND
        self.accepted[key] = now
        if deleting_seconds <= 0:
            del self.shares[share_id][task_id]
        else:
            task.status = "DELETING"
            heapq.heappush(self._vanishing, (now + deleting_seconds, share_id, task_id))
        return DeleteOutcome.ACCEPTED

    def create(self, share_id: str, task_type: str, src_target: str, src_prefix: str, now: float) -> Task:
        """A new task, finished at once: the fake runs no data transfer."""
        stamp = format_time(datetime.fromtimestamp(now, UTC))
        task = new_task(self._ids, share_id, task_type, src_target, src_prefix, stamp, stamp)
        self.shares[share_id][task.task_id] = task
        return task

    def records(self, share_id: str | None = None) -> list[dict[str, str]]:
        """Every current task (of one share, or all) in seed-file form."""
        shares = [share_id] if share_id is not None else list(self.shares)
        return [task.to_record() for sid in shares for task in self.shares.get(sid, {}).values()]
