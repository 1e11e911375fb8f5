"""Runs: their record and status, the active-run index, stopping and ending, retention."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import structlog

from worker.ledger._util import as_field, decode
from worker.ledger.events import EventLog
from worker.ledger.records import Outcome, RunStatus


class RunStore(EventLog):
    def create_run(self, run_id: str, meta: Mapping[str, Any]) -> None:
        now = time.time()
        fields = {k: as_field(v) for k, v in meta.items() if v is not None}
        fields.update({"run_id": run_id, "status": RunStatus.PLANNING.value, "created_at": str(now)})
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.run(run_id), mapping=fields)
        pipe.zadd(self.keys.runs, {run_id: now})
        # The reconciler walks this index, so an old run still active is never out of its sight.
        pipe.zadd(self.keys.active_runs, {run_id: now})
        pipe.execute()
        self.event("run_created", run_id=run_id, trigger=str(meta.get("trigger", "")))

    def planning_beat(self, run_id: str) -> bool:
        """The planner is alive and making progress (see :meth:`abandon_stale_planning`).

        Returns whether the run is still planning: ``False`` once it was cancelled or aborted,
        so the planner stops reading an inventory nobody will act on.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.run(run_id), "plan_beat", int(time.time()))
        pipe.hget(self.keys.run(run_id), "status")
        _, status = pipe.execute()
        return status is not None and decode(status) == RunStatus.PLANNING.value

    def abandon_stale_planning(self, run_id: str, stale_after_s: float) -> bool:
        """Abort a run that is still planning with no planner heartbeat for ``stale_after_s``.

        A control worker killed mid-plan leaves its run ``planning`` for ever otherwise. Atomic
        with :meth:`freeze`: a planner that was only slow finds its run aborted and sends nothing.
        """
        reason = f"planning stopped: no progress for {stale_after_s:g} s (the planner was killed or lost)"
        aborted = bool(self._abandon_stale(keys=[self.keys.run(run_id)], args=[stale_after_s, reason]))
        if aborted:
            self.event("run_abandoned", run_id=run_id, reason=reason)
            structlog.get_logger(__name__).warning("run abandoned: its planner stopped", run_id=run_id)
            key = self.run(run_id).get("idempotency_key")
            if key:  # a trigger sent again may start the run afresh
                self.release_trigger(key, run_id)
            self.on_run_over(run_id)
        return aborted

    def release_trigger(self, idempotency_key: str, run_id: str) -> bool:
        """Give a trigger's idempotency key back if ``run_id`` still holds it (compare-and-delete)."""
        return bool(
            self.redis.eval(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                1,
                self.keys.trigger(idempotency_key),
                run_id,
            )
        )

    def abandon(self, run_id: str, reason: str) -> None:
        """End a run that failed while planning (no job was sent): aborted, with the reason.

        Its trigger's idempotency key is given back: nothing was deleted, so the nightly
        catch-up (or the trigger sent again) must be free to start the run afresh.
        """
        key = self.keys.run(run_id)
        finals = int(self.redis.hget(key, "finals") or 0)
        trigger_key = self.redis.hget(key, "idempotency_key")
        if trigger_key:
            self.release_trigger(decode(trigger_key), run_id)
        self.redis.hset(
            key,
            mapping={
                "status": RunStatus.ABORTED.value,
                "reason": reason,
                "selected": finals,
                "finished_at": time.time(),
            },
        )
        self.on_run_over(run_id)

    def request_stop(self, run_id: str, final_status: RunStatus, reason: str) -> bool:
        """Stop a run: tasks without an outcome end as ``aborted``. False if it was not running."""
        return self._request_stop(run_id, final_status, reason) > 0

    def _request_stop(self, run_id: str, final_status: RunStatus, reason: str, *, only_held: bool = False) -> int:
        """stop.lua's answer: 0 not running, 1 stopping, 2 stopping and it was held (no job)."""
        only = "held" if only_held else ""
        answer = int(self._stop(keys=[self.keys.run(run_id)], args=[final_status.value, reason, only]))
        if answer:
            self.event("run_stopping", run_id=run_id, reason=reason)
        return answer

    def run(self, run_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(self.keys.run(run_id))
        return {decode(k): decode(v) for k, v in raw.items()}

    def status(self, run_id: str) -> RunStatus | None:
        value = self.redis.hget(self.keys.run(run_id), "status")
        return RunStatus(decode(value)) if value is not None else None

    def list_runs(self, limit: int = 20) -> list[dict[str, str]]:
        ids = [decode(r) for r in self.redis.zrevrange(self.keys.runs, 0, limit - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(self.keys.run(run_id))
        return [{decode(k): decode(v) for k, v in raw.items()} for raw in pipe.execute() if raw]

    def active_runs(self) -> list[str]:
        """Every run not yet over, oldest first (the reconciler's index, however many runs there are)."""
        return [decode(r) for r in self.redis.zrange(self.keys.active_runs, 0, -1)]

    def forget_active(self, run_id: str) -> None:
        """Drop a run from the active index (it is over, or its keys have expired)."""
        self.redis.zrem(self.keys.active_runs, run_id)

    def counts(self, run_id: str) -> dict[str, int]:
        meta = self.run(run_id)
        return {o.value: int(meta.get(f"n:{o.value}", 0)) for o in Outcome}

    def run_keys(self, run_id: str, batches: int) -> list[str]:
        """Every key of a run that retention expires (a lease expires on its own)."""
        keys = [
            self.keys.run(run_id),
            self.keys.plan(run_id),
            self.keys.open_batches(run_id),
            self.keys.touch(run_id),
            self.keys.rejected(run_id),
            self.keys.rejected_done(run_id),
            self.keys.rps(run_id),
            self.keys.bad_shares(run_id),
            self.keys.deliveries(run_id),
            self.keys.chain(run_id),
            self.keys.compacted(run_id),
        ]
        for number in range(batches):
            keys += [self.keys.outcomes(run_id, number), self.keys.attempts(run_id, number)]
        return keys

    def on_run_over(self, run_id: str) -> None:
        """Apply retention (by kind of run: :mod:`worker.ledger.retention`) to every key of an
        ended run, and log the event. With an archive target, the run waits in the archive's
        queue instead: the archiver applies the retention once its bundle is archived."""
        meta = self.run(run_id)
        keep = self.retention.for_run(meta)
        pipe = self.redis.pipeline(transaction=False)
        if self.retention.archive_first:
            pipe.zadd(self.keys.archive_pending, {run_id: time.time()})
        else:
            for key in self.run_keys(run_id, int(meta.get("batches", 0))):
                pipe.expire(key, keep)
        pipe.zrem(self.keys.active_runs, run_id)
        pipe.execute()
        self.close_ledger(run_id)
        self.event("run_over", run_id=run_id, status=meta.get("status", ""), reason=meta.get("reason", ""), keep_s=keep)
