"""The frozen plan of a run: its batches, which are still open, and when each was last touched."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from worker.ledger._base import LedgerBase
from worker.ledger._util import decode
from worker.ledger.records import Batch, encode_batch


class PlanStore(LedgerBase):
    def add_batches(
        self, run_id: str, batches: Iterable[tuple[int, str, list[str]] | tuple[int, str, list[str], str | None]]
    ) -> int:
        """Write plan batches (number, share, task IDs[, target]) in one round trip; returns tasks added."""
        pipe = self.redis.pipeline(transaction=False)
        now = str(int(time.time()))
        count = 0
        for number, share_id, task_ids, *rest in batches:
            target = rest[0] if rest else None
            # The planner may hand task IDs already marked for a recheck: written as given.
            pipe.hset(self.keys.plan(run_id), str(number), encode_batch(share_id, task_ids, target=target))
            pipe.sadd(self.keys.open_batches(run_id), str(number))
            pipe.hset(self.keys.touch(run_id), str(number), now)
            count += len(task_ids)
        pipe.execute()
        return count

    def add_rejected(self, run_id: str, items: Iterable[Mapping[str, Any]]) -> int:
        """Record refused input: each one is a selected entry whose final outcome is ``rejected``."""
        rows = [json.dumps(dict(item), separators=(",", ":"), ensure_ascii=True) for item in items]
        if not rows:
            return 0
        # One token per call, claimed in the same script as the writes: redis-py sends a command
        # again when its reply was lost, and the second run must not store the lines twice.
        keys = [self.keys.rejected(run_id), self.keys.run(run_id), self.keys.rejected_done(run_id)]
        self._add_rejected(keys=keys, args=[secrets.token_hex(8), *rows])
        return len(rows)

    def batch(self, run_id: str, number: int) -> Batch | None:
        value = self.redis.hget(self.keys.plan(run_id), str(number))
        if value is None:
            return None
        return Batch.parse(run_id, number, decode(value))

    def iter_batches(self, run_id: str) -> Iterator[Batch]:
        for key, value in self.redis.hscan_iter(self.keys.plan(run_id), count=500):
            yield Batch.parse(run_id, int(decode(key)), decode(value))

    def open_batches(self, run_id: str) -> list[int]:
        return sorted(int(decode(b)) for b in self.redis.smembers(self.keys.open_batches(run_id)))

    def last_touch(self, run_id: str) -> dict[int, float]:
        raw = self.redis.hgetall(self.keys.touch(run_id))
        return {int(decode(k)): float(decode(v)) for k, v in raw.items()}

    def touch(self, run_id: str, number: int) -> None:
        self.redis.hset(self.keys.touch(run_id), str(number), str(int(time.time())))
