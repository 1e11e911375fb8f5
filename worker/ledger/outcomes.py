"""Recording: each task's attempts and its one final outcome, and the write-ahead gate."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worker.ledger._util import decode
from worker.ledger.durable import Durability, call_and_wait, require
from worker.ledger.records import UNSENT, Attempt, Batch, FinalOutcome, Gate, RecordResult
from worker.ledger.runs import RunStore


class OutcomeStore(RunStore):
    durability: Durability = Durability()  # replicas that must hold a record (worker.ledger.durable)

    def record(
        self,
        batch: Batch,
        task_id: str,
        *,
        attempt: Attempt | None = None,
        final: FinalOutcome | None = None,
        bump: str = "",
        failure_ratio: float = 1.0,
        failure_min_attempts: int = 1_000_000_000,
        pipe: Any = None,
    ) -> RecordResult | None:
        """Append an attempt and/or write the final outcome, with counters, in one atomic step.

        With ``pipe`` the call is queued on that pipeline and ``None`` is returned.
        """
        run_id, number = batch.run_id, batch.number
        keys = [
            self.keys.run(run_id),
            self.keys.outcomes(run_id, number),
            self.keys.attempts(run_id, number),
            self.keys.open_batches(run_id),
            self.keys.rps(run_id),
        ]
        args = [
            task_id,
            attempt.to_json() if attempt else "",
            final.outcome.value if final else "",
            final.to_json() if final else "",
            number,
            len(batch.task_ids),
            bump,
            failure_ratio,
            failure_min_attempts,
            "1" if attempt is not None and attempt.verdict not in ("local", UNSENT) else "0",
            attempt.marker if attempt is not None else "",
        ]
        if pipe is not None:
            self._record(keys=keys, args=args, client=pipe)
            return None
        raw, acknowledged = call_and_wait(self._record, self.redis, self.durability, keys, args)
        require(acknowledged, self.durability)
        result = int(raw)
        if result == 2:
            self.on_run_over(run_id)
        return RecordResult(written=result >= 1, duplicate=result == -1, run_over=result == 2)

    def gate(self, batch: Batch, task_id: str, intent: Attempt, holder: str) -> Gate:
        """Record that a DELETE is about to leave, if it still may (see ``lua/gate.lua``).

        Raises any Redis error: the caller then sends nothing. Safe to repeat (same intent, same
        answer, counted once), which is what makes redis-py's retry of a lost reply harmless.
        """
        run_id, number = batch.run_id, batch.number
        keys = [
            self.keys.run(run_id),
            self.keys.attempts(run_id, number),
            self.keys.lease(run_id, number),
            self.keys.rps(run_id),
            self.keys.protected_tasks,
            self.keys.protected_shares,
        ]
        args = [task_id, intent.to_json(), intent.marker, holder, batch.share_id]
        raw, acknowledged = call_and_wait(self._gate, self.redis, self.durability, keys, args)
        gate = Gate(int(raw))
        if gate is Gate.GO:
            require(acknowledged, self.durability)  # fewer replicas: raises, and nothing is sent
        return gate

    def attempt_history(self, run_id: str, number: int, task_ids: Iterable[str]) -> dict[str, list[Attempt]]:
        """The attempts already recorded for these tasks (earlier deliveries of the batch)."""
        ids = list(task_ids)
        if not ids:
            return {}
        raw = self.redis.hmget(self.keys.attempts(run_id, number), ids)
        return {
            tid: [Attempt.from_json(line) for line in decode(value).split("\n") if line]
            for tid, value in zip(ids, raw, strict=True)
            if value
        }

    def finished_tasks(self, run_id: str, number: int) -> set[str]:
        return {decode(k) for k in self.redis.hkeys(self.keys.outcomes(run_id, number))}

    def mark_share_missing(self, run_id: str, share_id: str, description: str) -> None:
        self.redis.hsetnx(self.keys.bad_shares(run_id), share_id, description)

    def share_missing(self, run_id: str, share_id: str) -> str | None:
        value = self.redis.hget(self.keys.bad_shares(run_id), share_id)
        return decode(value) if value is not None else None
