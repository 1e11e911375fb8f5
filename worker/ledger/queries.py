"""Reading the audit: task records, refused input, a task's history, the request rate."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from worker.ledger._util import decode
from worker.ledger.compact import CompactStore
from worker.ledger.records import Attempt, Batch, FinalOutcome, TaskRecord


class QueryStore(CompactStore):
    def task_records(self, batch: Batch) -> Iterator[TaskRecord]:
        outs, atts = self.batch_records(batch)
        for task_id in batch.task_ids:
            final = FinalOutcome.from_json(outs[task_id]) if task_id in outs else None
            attempts = [Attempt.from_json(line) for line in atts.get(task_id, "").split("\n") if line]
            yield TaskRecord(batch.run_id, batch.number, batch.share_id, task_id, final, attempts)

    def rejected(self, run_id: str) -> Iterator[dict[str, Any]]:
        key = self.keys.rejected(run_id)
        total = int(self.redis.llen(key))
        for start in range(0, total, 1000):
            for raw in self.redis.lrange(key, start, start + 999):
                yield json.loads(decode(raw))

    def find_task(self, task_id: str, run_ids: Iterable[str] | None = None) -> Iterator[TaskRecord]:
        """Every record of a task, newest run first (scans the plans of the given or recent runs)."""
        if run_ids is None:
            run_ids = [decode(r) for r in self.redis.zrevrange(self.keys.runs, 0, 199)]
        for run_id in run_ids:
            for batch in self.iter_batches(run_id):
                if task_id in batch.task_ids:
                    for record in self.task_records(batch):
                        if record.task_id == task_id:
                            yield record

    def rate_profile(self, run_id: str) -> dict[str, Any]:
        """Requests per second over the run: the busiest second and the average."""
        raw = self.redis.hgetall(self.keys.rps(run_id))
        per_second = {int(decode(k)): int(decode(v)) for k, v in raw.items()}
        if not per_second:
            return {
                "requests": 0,
                "busiest_second": 0,
                "average_rps": 0.0,
                "median_rps": 0,
                "p95_rps": 0,
                "seconds": 0,
                "per_second": [],
            }
        first, last = min(per_second), max(per_second)
        seconds = last - first + 1
        total = sum(per_second.values())
        ordered = sorted(per_second.get(t, 0) for t in range(first, last + 1))
        return {
            "requests": total,
            "busiest_second": ordered[-1],
            "average_rps": round(total / seconds, 2),
            "median_rps": ordered[len(ordered) // 2],
            "p95_rps": ordered[min(len(ordered) - 1, (len(ordered) * 95) // 100)],
            "seconds": seconds,
            # The record itself: API requests sent in each second of the run (epoch second, count).
            "per_second": [[t, per_second.get(t, 0)] for t in range(first, last + 1)],
        }
