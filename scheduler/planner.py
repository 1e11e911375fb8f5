"""Planning: stream the inventory through the policy and freeze the run's plan in Redis.

Memory stays flat in the inventory's size: tasks are grouped per share into batches of
``batch_size`` and written to Redis as soon as a batch is full; only a compact fingerprint of
each task is kept (to refuse duplicates), 8 bytes per task.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scheduler.inventory import InventoryItem, Rejected
from scheduler.policy import Policy, Selector
from worker.audit import Audit, FinalOutcome, Outcome, RunStatus
from worker.settings import Settings

_FLUSH_BATCHES = 200
_FLUSH_REJECTED = 1000


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

    def as_dict(self) -> dict[str, Any]:
        return {
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
        }


class _Fingerprints:
    """8-byte digests of (share, task): duplicates are refused without keeping the IDs."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def add(self, share_id: str, task_id: str) -> bool:
        digest = hashlib.blake2b(f"{share_id}/{task_id}".encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "big")
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _rejection(item: Rejected) -> dict[str, Any]:
    return {"source": item.source, "line": item.line, "reason": item.reason, "raw": item.raw}


def plan_run(
    audit: Audit,
    settings: Settings,
    policy: Policy,
    items: Iterable[InventoryItem],
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
) -> PlanResult:
    """Create the run, write its plan, and freeze it. No job is sent yet.

    ``explicit`` runs (a list of tasks sent by another system, or a replay) skip the status and
    age rules, whose inputs such a list does not carry; instead every task is shown just before
    its delete and skipped unless it is finished. Protection lists and the cap still apply.
    ``trust_bare_entries`` (manifests) treats each entry that has neither a status nor an end
    time the same way, while entries that carry them go through the whole policy.
    """
    now = now or datetime.now(UTC)
    live_tasks = {t.decode() if isinstance(t, bytes) else t for t in audit.redis.smembers(audit.keys.protected_tasks)}
    live_shares = {s.decode() if isinstance(s, bytes) else s for s in audit.redis.smembers(audit.keys.protected_shares)}
    policy = policy.model_copy(
        update={
            "protected_task_ids": tuple(sorted(set(policy.protected_task_ids) | live_tasks)),
            "protected_share_ids": tuple(sorted(set(policy.protected_share_ids) | live_shares)),
        }
    )
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
    result = PlanResult(run_id=run_id, status=RunStatus.PLANNING, dry_run=dry_run)
    selector = Selector(policy, now)
    fingerprints = _Fingerprints()
    buffers: dict[str, list[str]] = {}
    ready: list[tuple[int, str, list[str]]] = []
    rejected: list[dict[str, Any]] = []

    def close_batch(share_id: str) -> None:
        tasks = buffers.pop(share_id)
        ready.append((result.batches, share_id, tasks))
        result.batches += 1
        if len(ready) >= _FLUSH_BATCHES:
            result.planned += audit.add_batches(run_id, ready)
            ready.clear()

    def reject(entry: dict[str, Any]) -> None:
        rejected.append(entry)
        if len(rejected) >= _FLUSH_REJECTED:
            result.rejected += audit.add_rejected(run_id, rejected)
            rejected.clear()

    for item in items:
        result.seen += 1
        if isinstance(item, Rejected):
            reject(_rejection(item))
            continue
        if settings.project_id and item.project_id != settings.project_id:
            reject(
                {
                    "source": source,
                    "line": 0,
                    "reason": f"project_id {item.project_id!r} is not the configured project",
                    "raw": f"{item.project_id}/{item.share_id}/{item.task_id}",
                }
            )
            continue
        bare = explicit or (trust_bare_entries and item.status is None and item.end_time is None)
        if bare:
            result.explicit += 1
            why = selector.is_protected(item.share_id, item.task_id)
            if why is None and policy.max_deletions is not None and result.shares.total() >= policy.max_deletions:
                why = "over_cap"
            if why is not None:
                result.not_selected[why] += 1
                continue
        else:
            decision = selector.decide(item)
            if not decision.selected:
                result.not_selected[decision.reason] += 1
                continue
        if not fingerprints.add(item.share_id, item.task_id):
            result.not_selected["duplicate"] += 1
            continue
        result.shares[item.share_id] += 1
        buffers.setdefault(item.share_id, []).append(item.task_id)
        if len(buffers[item.share_id]) >= settings.batch_size:
            close_batch(item.share_id)
    for share_id in list(buffers):
        close_batch(share_id)
    if ready:
        result.planned += audit.add_batches(run_id, ready)
    if rejected:
        result.rejected += audit.add_rejected(run_id, rejected)
    result.selected = result.planned + result.rejected
    result.status = audit.freeze(
        run_id,
        result.selected,
        batches=result.batches,
        planned=result.planned,
        seen=result.seen,
        not_selected=json.dumps(dict(result.not_selected)),
        recheck=bool(explicit or settings.recheck_status or result.explicit),
    )
    if dry_run and result.status is RunStatus.RUNNING:
        result.status = _record_dry_run(audit, run_id)
    return result


def _record_dry_run(audit: Audit, run_id: str) -> RunStatus:
    """A dry run decides everything at plan time: ``would_delete`` for each task, nothing sent."""
    at = datetime.now(UTC).timestamp()
    final = FinalOutcome(Outcome.WOULD_DELETE, at)
    pipe = audit.redis.pipeline(transaction=False)
    queued = 0
    for batch in audit.iter_batches(run_id):
        for task_id in batch.task_ids:
            audit.record(batch, task_id, final=final, pipe=pipe)
            queued += 1
        if queued >= 5000:
            pipe.execute()
            queued = 0
    pipe.execute()
    status = audit.status(run_id) or RunStatus.FINISHED
    if status in (RunStatus.FINISHED, RunStatus.ABORTED, RunStatus.CANCELLED):
        audit.on_run_over(run_id)
    return status
