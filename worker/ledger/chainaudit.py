"""Sealing and checking a run's hash chain (:mod:`worker.ledger.chain`) against its records.

When a run ends, its head is sealed: ``chain_head`` in the run hash, over every batch's head and
count in batch order. ``verify_run`` recomputes every batch's chain from the records (either
form, :mod:`worker.ledger.compact`), then the run's head and its counters from a recount.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from worker.ledger._util import decode
from worker.ledger.chain import Chain, ChainState, check_batch, split_seq
from worker.ledger.compact import CompactStore
from worker.ledger.records import SENDING, Outcome


@dataclass
class ChainVerification:
    run_id: str
    keyed: bool
    batches: int = 0
    entries: int = 0
    head: str | None = None  # the run head recomputed from the records
    sealed_head: str | None = None  # the one stored when the run ended
    problems: list[str] = field(default_factory=list)  # the first one is the first broken link
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "intact": self.intact,
            "keyed": self.keyed,
            "batches": self.batches,
            "entries": self.entries,
            "chain_head": self.head,
            "sealed_head": self.sealed_head,
            "first_broken_link": self.problems[0] if self.problems else None,
            "problems": self.problems,
            "notes": self.notes,
        }


def recount(finals: dict[str, str], attempts: dict[str, str]) -> tuple[Counter[str], int]:
    """Finals by outcome and attempt lines, as the records hold them."""
    outcomes: Counter[str] = Counter()
    for stored in finals.values():
        body, _, _ = split_seq(stored)
        marker = body.find('"o":"')
        outcomes[body[marker + 5 : body.find('"', marker + 5)] if marker >= 0 else "?"] += 1
    lines = sum(1 for value in attempts.values() for line in value.split("\n") if line)
    return outcomes, lines


class ChainAudit(CompactStore):
    chain: Chain

    def chain_states(self, run_id: str) -> dict[int, ChainState]:
        raw = self.redis.hgetall(self.keys.chain(run_id))
        states = {int(decode(k)): ChainState.decode(decode(v)) for k, v in raw.items()}
        return {n: s for n, s in states.items() if s is not None}

    def seal_chain(self, run_id: str) -> str:
        """Store the run's head over its batches' heads (called when the run ends, and again
        after a late write); returns it."""
        states = self.chain_states(run_id)
        head = self.chain.run_head(run_id, states.items())
        self.redis.hset(self.keys.run(run_id), "chain_head", head)
        return head

    def close_ledger(self, run_id: str) -> None:
        self.compact_run(run_id)
        self.seal_chain(run_id)

    def verify_run(self, run_id: str, chain: Chain | None = None) -> ChainVerification:
        chain = chain or self.chain
        meta = {decode(k): decode(v) for k, v in self.redis.hgetall(self.keys.run(run_id)).items()}
        result = ChainVerification(run_id, chain.keyed)
        if not meta:
            result.problems.append(f"no run {run_id!r}")
            return result
        states = self.chain_states(run_id)
        recomputed: dict[int, ChainState] = {}
        outcomes: Counter[str] = Counter()
        lines = pending = 0
        seen: set[int] = set()
        for batch in sorted(self.iter_batches(run_id), key=lambda b: b.number):
            if batch.number in seen:
                continue
            seen.add(batch.number)
            finals, attempts = self.batch_records(batch)
            check = check_batch(chain, run_id, batch.number, finals, attempts, states.get(batch.number))
            if check.problem:
                result.problems.append(check.problem)
            if check.state.count:
                recomputed[batch.number] = check.state
            if stray := sorted((set(finals) | set(attempts)) - set(batch.task_ids)):
                result.problems.append(f"batch {batch.number}, task {stray[0]}: a record of a task not in the plan")
            counted, n = recount(finals, attempts)
            outcomes.update(counted)
            lines += n
            pending += sum(1 for v in attempts.values() if SENDING in v and '"v":"sending"' in v)
        for number in sorted(set(states) - seen):
            result.problems.append(f"batch {number}: a chain for a batch the plan does not have")
        result.batches = len(seen)
        result.entries = sum(s.count for s in recomputed.values())
        result.head = chain.run_head(run_id, recomputed.items())
        result.sealed_head = meta.get("chain_head") or None
        self._check_counters(meta, outcomes, lines, result)
        if result.sealed_head is None:
            result.notes.append("the run's head is not sealed (the run is not over, or a write came after)")
        elif result.sealed_head != result.head:
            result.problems.append(
                "the run's sealed head differs from the one recomputed from its batches "
                "(a batch's records or chain changed after the run ended)"
            )
        if not chain.keyed:
            result.notes.append(
                "the chain is not keyed (no SFS_CLEANUP_AUDIT_KEY): it shows mistakes and partial edits, "
                "but anyone who can write Redis can rebuild it"
            )
        if pending:
            result.notes.append(f"{pending} tasks hold a DELETE intent no answer completed")
        return result

    def _check_counters(
        self, meta: dict[str, str], outcomes: Counter[str], lines: int, result: ChainVerification
    ) -> None:
        rejected_lines = int(self.redis.llen(self.keys.rejected(result.run_id)))
        expected = {f"n:{o.value}": outcomes.get(o.value, 0) for o in Outcome}
        expected["n:rejected"] += rejected_lines
        expected["finals"] = sum(outcomes.values()) + rejected_lines
        expected["attempts"] = lines
        expected["chain_n"] = result.entries
        for name, count in expected.items():
            stored = int(meta.get(name, 0) or 0)
            if stored != count:
                result.problems.append(f"counter {name} says {stored}, a recount of the records finds {count}")
