"""Freezing a plan: a run's totals are fixed and it starts, is held for approval, or ends at once
if it was stopped meanwhile; releasing a held run; stopping one (it has no job to do that)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from worker.ledger._util import as_field, decode
from worker.ledger.outcomes import OutcomeStore, RecordItem
from worker.ledger.plans import PlanStore
from worker.ledger.records import OVER, FinalOutcome, Outcome, RunStatus


class PlanFreeze(OutcomeStore, PlanStore):
    def freeze(self, run_id: str, selected: int, *, start_as: RunStatus = RunStatus.RUNNING, **meta: Any) -> RunStatus:
        """Fix the run's totals (planned tasks plus rejected entries) and start it (or hold it:
        ``start_as=HELD``, with ``hold_reason`` in ``meta``; a run with nothing left to do ends).

        A run cancelled (or stopped) while it was planning is frozen too, so that its totals
        are known, and ended at once: each planned task is recorded ``aborted`` (nothing was
        sent), which keeps ``selected`` equal to the sum of the outcomes.
        """
        if meta:
            self.redis.hset(self.keys.run(run_id), mapping={k: as_field(v) for k, v in meta.items()})
        raw_status, changed = self._freeze(keys=[self.keys.run(run_id)], args=[selected, start_as.value])
        status = RunStatus(decode(raw_status))
        if status is RunStatus.STOPPING and int(changed):
            self._abort_unsent(run_id)  # which ends the run
            return self.status(run_id) or RunStatus.ABORTED
        if status in OVER and int(changed):
            self.on_run_over(run_id)
        return status

    def release(self, run_id: str, by: str, how: str) -> bool:
        """Start a held run (approved by ``by``, through ``how``). False if it was not held."""
        token = secrets.token_hex(8)
        released = bool(self._release(keys=[self.keys.run(run_id)], args=[by, how, token]))
        if released:
            self.event("run_approved", run_id=run_id, by=by, how=how)
        return released

    def request_stop(self, run_id: str, final_status: RunStatus, reason: str, *, only_held: bool = False) -> bool:
        """Stop a run; a held one has no job to record its tasks aborted, so this does, and ends it.
        ``only_held``: stop it only if it is still held (not approved meanwhile)."""
        answer = self._request_stop(run_id, final_status, reason, only_held=only_held)
        if answer == 2:
            self._abort_unsent(run_id, "never approved: never sent")
        return answer > 0

    def _abort_unsent(self, run_id: str, why_unsent: str = "while planning: never sent") -> None:
        """Record ``aborted`` for every planned task of a run stopped before its first job."""
        why = self.run(run_id).get("reason") or "stopped"
        self.settle_all(run_id, FinalOutcome(Outcome.ABORTED, time.time(), reason=f"{why} ({why_unsent})"[:500]))
        if self.status(run_id) in OVER:
            self.on_run_over(run_id)

    def settle_all(self, run_id: str, final: FinalOutcome) -> None:
        """Record one final outcome for every planned task still without one, in pipelines.

        For runs decided without a job: a dry run (``would_delete``) and a run stopped while it
        was planning (``aborted``). Each record is the usual once-only write.
        """
        items: list[RecordItem] = []
        for batch in self.iter_batches(run_id):
            items.extend(RecordItem(batch, task_id, final=final) for task_id in batch.task_ids)
            if len(items) >= 5000:
                self.record_many(items, transaction=False)
                items = []
        self.record_many(items, transaction=False)
