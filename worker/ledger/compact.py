"""The compact ledger: a finished batch's outcomes and attempts as one compressed value.

While a run goes on, each batch keeps two small hashes (``out:N``, ``att:N``) that the Lua
scripts write in place. Once the run is over nothing writes them any more (``record.lua``
refuses a compacted batch), so each batch is folded into one zlib value in ``P:run:{R}:z``:
one row per task of the plan, in plan order (the task ID is the plan's, not stored again)::

    <final record> TAB <attempt lines joined by RS>

and a task outside the plan (never written by this release) as ``<task ID> TAB <final> TAB
<attempts>``. The stored records are kept byte for byte, chain positions included, so the hash
chain verifies over either form. Readers go through :meth:`CompactStore.batch_records`, which
reads both forms (a batch is in one or the other).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence

import structlog

from worker.ledger._util import decode
from worker.ledger.plans import PlanStore
from worker.ledger.records import Batch

_RS = "\x1e"  # JSON escapes every control character, so neither TAB nor RS occurs in a record
_ROUND = 50  # batches read (and written) per round trip


def encode_batch_records(task_ids: Sequence[str], finals: Mapping[str, str], attempts: Mapping[str, str]) -> bytes:
    rows = [f"{finals.get(t, '')}\t{attempts.get(t, '').replace(chr(10), _RS)}" for t in task_ids]
    planned = set(task_ids)
    for t in sorted((set(finals) | set(attempts)) - planned):
        rows.append(f"{t}\t{finals.get(t, '')}\t{attempts.get(t, '').replace(chr(10), _RS)}")
    return zlib.compress("\n".join(rows).encode(), 6)


def decode_batch_records(task_ids: Sequence[str], blob: bytes) -> tuple[dict[str, str], dict[str, str]]:
    finals: dict[str, str] = {}
    attempts: dict[str, str] = {}
    lines = zlib.decompress(blob).decode().split("\n")
    for i, row in enumerate(lines):
        parts = row.split("\t")
        if i >= len(task_ids) or len(parts) == 3:
            task_id, final, att = parts[0], parts[1], parts[2]
        else:
            task_id, final, att = task_ids[i], parts[0], parts[1]
        if final:
            finals[task_id] = final
        if att:
            attempts[task_id] = att.replace(_RS, "\n")
    return finals, attempts


class CompactStore(PlanStore):
    def batch_records(self, batch: Batch) -> tuple[dict[str, str], dict[str, str]]:
        """A batch's stored final records and attempt lines by task, from either form."""
        pipe = self.raw_redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.outcomes(batch.run_id, batch.number))
        pipe.hgetall(self.keys.attempts(batch.run_id, batch.number))
        pipe.hget(self.keys.compacted(batch.run_id), str(batch.number))
        outs, atts, blob = pipe.execute()
        finals = {decode(k): decode(v) for k, v in outs.items()}
        attempts = {decode(k): decode(v) for k, v in atts.items()}
        if blob is not None:
            packed_finals, packed_attempts = decode_batch_records(batch.task_ids, blob)
            finals = packed_finals | finals
            attempts = packed_attempts | attempts
        return finals, attempts

    def expand_batch(self, batch: Batch) -> None:
        """Back to the live hashes, for a write that came after the run ended (``lua/expand.lua``)."""
        blob = self.raw_redis.hget(self.keys.compacted(batch.run_id), str(batch.number))
        if blob is None:
            return  # expanded meanwhile by another writer
        finals, attempts = decode_batch_records(batch.task_ids, blob)
        keys = [
            self.keys.outcomes(batch.run_id, batch.number),
            self.keys.attempts(batch.run_id, batch.number),
            self.keys.compacted(batch.run_id),
            self.keys.run(batch.run_id),
        ]
        args: list[str | bytes | int] = [batch.number, blob, len(finals)]
        for pairs in (finals, attempts):
            for task_id, value in pairs.items():
                args += [task_id, value]
        self._expand(keys=keys, args=args)

    def compact_run(self, run_id: str) -> int:
        """Compact every batch of an ended run that no job holds; returns the batches left live.

        Safe to call again (a compacted batch is skipped) and against concurrent writes (a batch
        written meanwhile is left for the next call: ``lua/compact.lua``).
        """
        started = time.monotonic()
        batches = list(self.iter_batches(run_id))
        done = self.redis.hkeys(self.keys.compacted(run_id))
        compacted = {int(decode(n)) for n in done}
        todo = [b for b in {b.number: b for b in batches}.values() if b.number not in compacted]
        left = 0
        for start in range(0, len(todo), _ROUND):
            chunk = todo[start : start + _ROUND]
            pipe = self.redis.pipeline(transaction=False)
            for b in chunk:
                pipe.hgetall(self.keys.outcomes(run_id, b.number))
                pipe.hgetall(self.keys.attempts(run_id, b.number))
                pipe.hget(self.keys.chain(run_id), str(b.number))
            raw = pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            for i, b in enumerate(chunk):
                outs, atts, state = raw[3 * i : 3 * i + 3]
                if not outs and not atts:
                    continue  # nothing written, or compacted meanwhile by another process
                finals = {decode(k): decode(v) for k, v in outs.items()}
                attempts = {decode(k): decode(v) for k, v in atts.items()}
                blob = encode_batch_records(b.task_ids, finals, attempts)
                keys = [
                    self.keys.outcomes(run_id, b.number),
                    self.keys.attempts(run_id, b.number),
                    self.keys.lease(run_id, b.number),
                    self.keys.chain(run_id),
                    self.keys.compacted(run_id),
                    self.keys.run(run_id),
                ]
                self._compact(keys=keys, args=[b.number, decode(state) if state is not None else "", blob], client=pipe)
            left += sum(1 for r in pipe.execute() if not int(r))
        if todo:
            structlog.get_logger(__name__).info(
                "ledger compacted",
                run_id=run_id,
                batches=len(todo) - left,
                left=left,
                seconds=round(time.monotonic() - started, 2),
            )
        return left
