"""The live protection lists, read at delete time."""

from __future__ import annotations

from collections.abc import Iterable

from worker.ledger._base import LedgerBase


class ProtectionStore(LedgerBase):
    def protected(self, share_id: str, task_ids: Iterable[str]) -> dict[str, str]:
        """Live protection lists, read at delete time: task ID -> reason, for protected tasks."""
        ids = list(task_ids)
        pipe = self.redis.pipeline(transaction=False)
        pipe.sismember(self.keys.protected_shares, share_id)
        pipe.smismember(self.keys.protected_tasks, ids) if ids else pipe.ping()
        share_hit, task_hits = pipe.execute()
        if share_hit:
            return dict.fromkeys(ids, "protected_share")
        if not ids:
            return {}
        return {tid: "protected_task" for tid, hit in zip(ids, task_hits, strict=True) if hit}
