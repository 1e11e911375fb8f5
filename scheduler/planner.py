"""Planning: stream the inventory through the policy and freeze the run's plan in Redis.

Memory stays flat in the inventory's size: tasks are grouped per share into batches of
``batch_size`` and written to Redis as soon as a batch is full; only a compact fingerprint of
each task is kept (to refuse duplicates), 8 bytes per task.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scheduler.inventory import Discovery, InventoryItem, Rejected, TargetStart
from scheduler.policy import Policy, Selector
from worker.ledger import RECHECK_MARK, Audit, FinalOutcome, Outcome, RunStatus
from worker.models import TaskInfo
from worker.settings import Settings

_FLUSH_BATCHES = 200
# A planner's heartbeat: far more often than any sensible SFS_CLEANUP_PLANNING_STALE_S.
_BEAT_EVERY_S = 5.0
_FLUSH_REJECTED = 1000
SAMPLE_SIZE = 10


@dataclass
class PlanResult:
    run_id: str
    status: RunStatus
    dry_run: bool
    selected: int = 0  # planned tasks plus rejected entries: the run's total
    planned: int = 0
    rejected: int = 0
    batches: int = 0
    seen: int = 0
    not_selected: Counter[str] = field(default_factory=Counter)
    shares: Counter[str] = field(default_factory=Counter)
    explicit: int = 0  # entries planned without status and age rules: rechecked at delete time
    types: Counter[str] = field(default_factory=Counter)
    oldest_end: datetime | None = None  # of the planned tasks whose end time is known
    newest_end: datetime | None = None
    sample: list[str] = field(default_factory=list)  # the first planned tasks, share/task
    cap: int | None = None
    hold_reason: str | None = None  # why the run waits for approval (nothing sent until then)
    discovery: Discovery | None = None  # the shares found, when none were named
    # Per target of a targets file: what it is, its planned and rejected tasks, its discovery.
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def note(self, item: TaskInfo) -> None:
        """Count a planned task into what the plan shows before anyone consents to it."""
        self.types[item.type or "unknown"] += 1
        if (end := item.end_time) is not None:
            self.oldest_end = end if self.oldest_end is None else min(self.oldest_end, end)
            self.newest_end = end if self.newest_end is None else max(self.newest_end, end)
        if len(self.sample) < SAMPLE_SIZE:
            self.sample.append(f"{item.share_id}/{item.task_id}")

    def summary(self) -> dict[str, Any]:
        """What a reviewer sees of the selection, beyond the counts (stored with the run)."""
        return (
            {
                "types": dict(self.types),
                "oldest_end": self.oldest_end.isoformat() if self.oldest_end else None,
                "newest_end": self.newest_end.isoformat() if self.newest_end else None,
                "sample": self.sample,
                "cap": self.cap,
            }
            | self._discovered()
            | ({"targets": self.targets} if self.targets else {})
        )

    def _discovered(self) -> dict[str, Any]:
        found = self.discovery
        if found is None:
            return {}
        skipped = {share.share_id: share.as_dict() for share in found.skipped}
        return {"discovery": found.summary(), "skipped_shares": skipped}

    def as_dict(self) -> dict[str, Any]:
        return self.summary() | {
            "run_id": self.run_id,
            "status": self.status.value,
            "dry_run": self.dry_run,
            "seen": self.seen,
            "selected": self.selected,
            "planned": self.planned,
            "rejected": self.rejected,
            "batches": self.batches,
            "not_selected": dict(self.not_selected),
            "shares": dict(self.shares),
            "hold_reason": self.hold_reason,
        }


class _Fingerprints:
    """A set of 8-byte digests of (share, task), to refuse duplicates without keeping the IDs.

    An open-addressing table in an ``array('Q')`` costs 16 bytes per task at most (load kept
    under one half), where a Python ``set`` of ints cost 66 MB per million tasks (measured by
    the scale benchmark); this keeps the planner's memory flat in the inventory's size.
    """

    def __init__(self, capacity: int = 1 << 12) -> None:
        self._slots = array("Q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._count = 0

    @staticmethod
    def _key(share_id: str, task_id: str) -> int:
        digest = hashlib.blake2b(f"{share_id}/{task_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") | 1  # never 0, the empty slot

    def add(self, share_id: str, task_id: str) -> bool:
        """Add the task; ``False`` if it was already there."""
        if not self._insert(self._key(share_id, task_id)):
            return False
        self._count += 1
        if self._count * 2 > self._mask:
            self._grow()
        return True

    def _insert(self, key: int) -> bool:
        """Linear probing from the key's slot; ``False`` if the key is already there."""
        slots, mask = self._slots, self._mask
        i = key & mask
        while (value := slots[i]) != 0:
            if value == key:
                return False
            i = (i + 1) & mask
        slots[i] = key
        return True

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", bytes(16 * len(old)))
        self._mask = len(self._slots) - 1
        for key in old:
            if key:
                self._insert(key)


def _rejection(item: Rejected) -> dict[str, Any]:
    return {"source": item.source, "line": item.line, "reason": item.reason, "raw": item.raw}


class _PlanningStoppedError(Exception):
    """The run was cancelled (or aborted) while planning: stop reading the inventory."""


class _PlanWriter:
    """Groups selected tasks per share into batches and writes them to Redis as they fill."""

    def __init__(self, audit: Audit, run_id: str, batch_size: int, result: PlanResult) -> None:
        self.audit, self.run_id, self.batch_size, self.result = audit, run_id, batch_size, result
        self.buffers: dict[tuple[str | None, str], list[str]] = {}
        self.ready: list[tuple[int, str, list[str], str | None]] = []
        self.rejected: list[dict[str, Any]] = []
        self._next_beat = 0.0

    def beat(self) -> None:
        """Show the reconciler this planner is alive (a killed one's run is aborted as stale).

        Raises :class:`_PlanningStoppedError` once the run is no longer planning (cancelled).
        """
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + _BEAT_EVERY_S
            if not self.audit.planning_beat(self.run_id):
                raise _PlanningStoppedError

    def add(self, share_id: str, task_id: str, *, recheck: bool = False, target: str | None = None) -> None:
        self.result.shares[share_id] += 1
        if target is not None:
            self.result.targets[target]["planned"] += 1
        buffer = self.buffers.setdefault((target, share_id), [])
        buffer.append(RECHECK_MARK + task_id if recheck else task_id)
        if len(buffer) >= self.batch_size:
            self._close((target, share_id))

    def reject(self, entry: dict[str, Any], target: str | None = None) -> None:
        if target is not None:
            self.result.targets[target]["rejected"] += 1
        self.rejected.append(entry)
        if len(self.rejected) >= _FLUSH_REJECTED:
            self._flush_rejected()

    def _close(self, key: tuple[str | None, str]) -> None:
        target, share_id = key
        self.ready.append((self.result.batches, share_id, self.buffers.pop(key), target))
        self.result.batches += 1
        if len(self.ready) >= _FLUSH_BATCHES:
            self._flush_batches()

    def _flush_batches(self) -> None:
        if self.ready:
            self.result.planned += self.audit.add_batches(self.run_id, self.ready)
            self.ready.clear()

    def _flush_rejected(self) -> None:
        if self.rejected:
            self.result.rejected += self.audit.add_rejected(self.run_id, self.rejected)
            self.rejected.clear()

    def finish(self) -> None:
        for key in list(self.buffers):
            self._close(key)
        self._flush_batches()
        self._flush_rejected()


def _with_live_protection(audit: Audit, policy: Policy) -> Policy:
    """The policy plus the live protection lists, so a dry run shows exactly what is held."""

    def members(key: str) -> set[str]:
        return {m.decode() if isinstance(m, bytes) else m for m in audit.redis.smembers(key)}

    return policy.model_copy(
        update={
            "protected_task_ids": tuple(sorted(set(policy.protected_task_ids) | members(audit.keys.protected_tasks))),
            "protected_share_ids": tuple(
                sorted(set(policy.protected_share_ids) | members(audit.keys.protected_shares))
            ),
        }
    )


def plan_run(
    audit: Audit,
    settings: Settings,
    policy: Policy,
    items: Iterable[InventoryItem | Discovery | TargetStart],
    *,
    run_id: str,
    dry_run: bool,
    trigger: str,
    source: str,
    now: datetime | None = None,
    parent_run: str | None = None,
    extra_meta: dict[str, Any] | None = None,
    explicit: bool = False,
    trust_bare_entries: bool = False,
    hold_if: Callable[[PlanResult], str | None] | None = None,
) -> PlanResult:
    """Create the run, write its plan, and freeze it. No job is sent yet.

    ``explicit`` runs (a list of tasks sent by another system, or a replay) skip the status and
    age rules, whose inputs such a list does not carry; instead every task is shown just before
    its delete and skipped unless it is finished. Protection lists and the cap still apply.
    ``hold_if`` sees the finished plan of a run that is not dry: a reason it gives holds the run
    (status ``held``: frozen, nothing sent until it is approved).
    ``trust_bare_entries`` (manifests) treats each entry that has neither a status nor an end
    time the same way, while entries that carry them go through the whole policy.
    """
    policy = _with_live_protection(audit, policy)
    audit.create_run(
        run_id,
        {
            "trigger": trigger,
            "source": source,
            "dry_run": dry_run,
            "project_id": settings.project_id,
            "endpoint": settings.api_endpoint,
            "policy": policy.model_dump(mode="json"),
            "protected_task_ids": ",".join(policy.protected_task_ids),
            "protected_share_ids": ",".join(policy.protected_share_ids),
            "parent_run": parent_run,
            "batch_size": settings.batch_size,
            **(extra_meta or {}),
        },
    )
    result = PlanResult(run_id=run_id, status=RunStatus.PLANNING, dry_run=dry_run, cap=policy.max_deletions)
    selector = Selector(policy, now or datetime.now(UTC))
    fingerprints = _Fingerprints()
    writer = _PlanWriter(audit, run_id, settings.batch_size, result)

    def bare(item: TaskInfo) -> bool:
        """A manifest entry with neither status nor end time: shown just before its delete."""
        return trust_bare_entries and item.status is None and item.end_time is None

    def not_selected_because(item: TaskInfo) -> str | None:
        if explicit or bare(item):
            result.explicit += 1
            decision = selector.admit(item.share_id, item.task_id)
        else:
            decision = selector.decide(item)
        return None if decision.selected else decision.reason

    try:
        # An explicit run shows every task (the run's flag); a manifest only its bare entries.
        recheck = (lambda item: False) if explicit else bare
        _plan_items(items, result, writer, fingerprints, not_selected_because, recheck, settings, source)
    except _PlanningStoppedError:
        # Cancelled mid-plan: what was planned so far is frozen below, and freeze ends the run
        # with those tasks aborted, so its counters still add up.
        pass
    except BaseException as exc:
        # Nothing was sent yet: close the run as aborted, with why, instead of leaving it planning.
        # If Redis itself is what failed, the original error is the one worth raising.
        with contextlib.suppress(Exception):
            audit.abandon(run_id, f"planning failed: {type(exc).__name__}: {exc}"[:500])
        raise
    writer.finish()
    result.selected = result.planned + result.rejected
    result.hold_reason = None if dry_run or hold_if is None else hold_if(result)
    held = {"hold_reason": result.hold_reason, "held_at": time.time()} if result.hold_reason else {}
    result.status = audit.freeze(
        run_id,
        result.selected,
        start_as=RunStatus.HELD if result.hold_reason else RunStatus.RUNNING,
        summary=json.dumps(result.summary()),
        **held,
        batches=result.batches,
        planned=result.planned,
        seen=result.seen,
        not_selected=json.dumps(dict(result.not_selected)),
        recheck=bool(explicit or settings.recheck_status),
        # Over a targets file, each target has its own project and endpoint (in the summary).
        **({"project_id": "", "endpoint": ""} if result.targets else {}),
    )
    if dry_run and result.status is RunStatus.RUNNING:
        result.status = _record_dry_run(audit, run_id)
    return result


def _plan_items(
    items: Iterable[InventoryItem | Discovery | TargetStart],
    result: PlanResult,
    writer: _PlanWriter,
    fingerprints: _Fingerprints,
    not_selected_because: Callable[[TaskInfo], str | None],
    recheck: Callable[[TaskInfo], bool],
    settings: Settings,
    source: str,
) -> None:
    target: str | None = None  # the items' target (a targets file), until the next TargetStart
    project_id = settings.project_id
    for item in items:
        if isinstance(item, TargetStart):
            target, project_id = item.name, item.project_id
            if target not in result.targets:  # a replay may come back to a target
                result.targets[target] = dict(item.info) | {"planned": 0, "rejected": 0}
            continue
        if isinstance(item, Discovery):
            if target is None:
                result.discovery = item  # not a task: no count, no outcome
            else:
                result.targets[target]["discovery"] = item.summary()
                result.targets[target]["skipped_shares"] = {s.share_id: s.as_dict() for s in item.skipped}
            continue
        result.seen += 1
        writer.beat()
        if isinstance(item, Rejected):
            writer.reject(_rejection(item), target)
        elif project_id and item.project_id != project_id:
            writer.reject(
                {
                    "source": source,
                    "line": 0,
                    "reason": f"project_id {item.project_id!r} is not the configured project",
                    "raw": f"{item.project_id}/{item.share_id}/{item.task_id}",
                },
                target,
            )
        elif not fingerprints.add(item.share_id, item.task_id):
            result.not_selected["duplicate"] += 1  # before the policy, so a repeat uses no cap slot
        elif why := not_selected_because(item):
            result.not_selected[why] += 1
        else:
            writer.add(item.share_id, item.task_id, recheck=recheck(item), target=target)
            result.note(item)


def _record_dry_run(audit: Audit, run_id: str) -> RunStatus:
    """A dry run decides everything at plan time: ``would_delete`` for each task, nothing sent."""
    audit.settle_all(run_id, FinalOutcome(Outcome.WOULD_DELETE, datetime.now(UTC).timestamp()))
    status = audit.status(run_id) or RunStatus.FINISHED
    if status in (RunStatus.FINISHED, RunStatus.ABORTED, RunStatus.CANCELLED):
        audit.on_run_over(run_id)
    return status
