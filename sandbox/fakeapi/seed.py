"""Realistic inventories for the fake: generated from a seed, or read from / written to JSON lines.

A JSON-lines file has one task per line with its ``share_id``; a line with a ``share_id`` and
no ``task_id`` declares a share with no tasks (so empty file systems survive a round trip).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from sandbox.fakeapi.tasks import TYPES, Task, format_time, parse_time

# Weights of a plausible fleet: mostly finished tasks, a few running or being deleted.
_TYPE_WEIGHTS: Final = (35, 20, 25, 20)
_STATUS_WEIGHTS: Final = (("SUCCESS", 72), ("FAIL", 18), ("DOING", 6), ("DELETING", 4))
_MAX_AGE_S: Final = 90 * 86400
_MIN_AGE_S: Final = 300
_NO_END_TIME_RATIO: Final = 0.03
_BAD_END_TIME_RATIO: Final = 0.01
_BAD_END_TIMES: Final = ("N/A", "", "1970-13-45T99:99:99", "yesterday")
_FAIL_MESSAGES: Final = (
    "obs access denied",
    "obs bucket not found",
    "the linked directory does not exist",
    "some objects failed to import",
    "task interrupted by file system upgrade",
)


@dataclass
class Inventory:
    """What the fake serves: one project, its shares (in order) and their tasks."""

    project_id: str
    share_ids: list[str] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)


def project_id_for(seed: int) -> str:
    """A 32-hex project ID that depends only on the seed (so demos print stable IDs)."""
    return f"{random.Random(f'project-{seed}').getrandbits(128):032x}"


def generate(
    shares: int,
    tasks_per_share: int,
    seed: int,
    now: datetime,
    *,
    project_id: str | None = None,
) -> Inventory:
    """A reproducible mix of tasks: the same arguments give the same inventory, byte for byte."""
    rng = random.Random(seed)
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    inventory = Inventory(project_id=project_id or project_id_for(seed))
    statuses = [name for name, _ in _STATUS_WEIGHTS]
    status_weights = [weight for _, weight in _STATUS_WEIGHTS]
    for share_index in range(shares):
        share_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        inventory.share_ids.append(share_id)
        for task_index in range(tasks_per_share):
            task_type = rng.choices(TYPES, _TYPE_WEIGHTS)[0]
            status = rng.choices(statuses, status_weights)[0]
            inventory.tasks.append(
                _task(
                    rng,
                    share_id=share_id,
                    share_index=share_index,
                    task_index=task_index,
                    task_type=task_type,
                    status=status,
                    now=now,
                )
            )
    return inventory


def _task(
    rng: random.Random,
    *,
    share_id: str,
    share_index: int,
    task_index: int,
    task_type: str,
    status: str,
    now: datetime,
) -> Task:
    target = f"obs-link-{share_index}-{rng.randrange(3)}"
    prefix = "" if rng.random() < 0.1 else f"data/batch-{task_index // 50:04d}/"
    age = timedelta(seconds=rng.uniform(_MIN_AGE_S, _MAX_AGE_S))
    duration = timedelta(seconds=rng.uniform(5, 4 * 3600))
    end = now - age
    start_time: str | None = format_time(end - duration)
    end_time: str | None = format_time(end)
    message = "task succeeded"
    if status == "DOING":
        end_time = ""  # running: no end yet
        start_time = format_time(now - timedelta(seconds=rng.uniform(10, 6 * 3600)))
        message = "task is running"
    elif status == "FAIL":
        message = rng.choice(_FAIL_MESSAGES)
    elif status == "DELETING":
        message = "task is being deleted"
    dice = rng.random()
    if status != "DOING" and dice < _NO_END_TIME_RATIO:
        end_time = None
        if dice < _NO_END_TIME_RATIO / 3:
            start_time = None
    elif status != "DOING" and dice < _NO_END_TIME_RATIO + _BAD_END_TIME_RATIO:
        end_time = rng.choice(_BAD_END_TIMES)
    return new_task(rng, share_id, task_type, target, prefix, start_time, end_time, status=status, message=message)


def new_task(
    rng: random.Random,
    share_id: str,
    task_type: str,
    target: str,
    prefix: str,
    start_time: str | None,
    end_time: str | None,
    *,
    status: str = "SUCCESS",
    message: str = "task succeeded",
) -> Task:
    """A task with a fresh random ID whose data stays where it came from (destination = source).

    The ID is drawn last, so callers that draw other values from ``rng`` first keep their order.
    """
    return Task(
        share_id=share_id,
        task_id=f"{rng.getrandbits(128):032x}",
        type=task_type,
        status=status,
        src_target=target,
        dest_target=target,
        src_prefix=prefix,
        dest_prefix=prefix,
        start_time=start_time,
        end_time=end_time,
        message=message,
    )


def load(path: str | Path, project_id: str) -> Inventory:
    """Read a JSON-lines inventory; blank lines and lines starting with ``#`` are skipped."""
    inventory = Inventory(project_id=project_id)
    seen: set[str] = set()
    with Path(path).open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                share_id = str(record.get("share_id") or "")
                if not share_id:
                    raise ValueError("no share_id")
                if share_id not in seen:
                    seen.add(share_id)
                    inventory.share_ids.append(share_id)
                if record.get("task_id"):
                    inventory.tasks.append(Task.from_record(record))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
    return inventory


def dump(inventory: Inventory, path: str | Path) -> None:
    """Write ``inventory`` as JSON lines, share by share, that :func:`load` reads back unchanged."""
    by_share: dict[str, list[Task]] = {share_id: [] for share_id in inventory.share_ids}
    for task in inventory.tasks:
        by_share.setdefault(task.share_id, []).append(task)
    with Path(path).open("w", encoding="utf-8") as out:
        for share_id, tasks in by_share.items():
            if not tasks:
                out.write(json.dumps({"share_id": share_id}) + "\n")
            for task in tasks:
                out.write(json.dumps(task.to_record(), separators=(",", ":")) + "\n")


def eligible(
    tasks: Iterable[Task],
    statuses: Sequence[str] | None,
    types: Sequence[str] | None,
    older_than: timedelta | float,
    now: datetime,
) -> dict[str, int]:
    """How many tasks per share a purge policy may delete: status and type match (None: any),
    and the end time is known and at least ``older_than`` ago. Unknown times never count as old.

    Every share that has tasks appears, with 0 when none is eligible.
    """
    age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
    cutoff = (now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)) - age
    wanted_status = set(statuses) if statuses is not None else None
    wanted_type = set(types) if types is not None else None
    counts: dict[str, int] = {}
    for task in tasks:
        counts.setdefault(task.share_id, 0)
        if wanted_status is not None and task.status not in wanted_status:
            continue
        if wanted_type is not None and task.type not in wanted_type:
            continue
        ended = parse_time(task.end_time)
        if ended is not None and ended <= cutoff:
            counts[task.share_id] += 1
    return counts
