"""Recording: each task's attempts and its one final outcome, and the write-ahead gate.

Both join the batch's hash chain (:mod:`worker.ledger.chain`) in the same Lua step. This process
keeps the chain state it last saw for each batch, and writes of one batch from this process go
one at a time (a lock per batch), so the state is right unless another process wrote the batch
meanwhile (a job that lost its lease, a stop settling unsent tasks); then the script answers the
current state and the write is recomputed and sent again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from worker.ledger._util import decode
from worker.ledger.chain import ATTEMPT, FINAL, INTENT, Chain, ChainState
from worker.ledger.compact import CompactStore
from worker.ledger.durable import Durability, NotReplicatedError, confirm, require
from worker.ledger.records import Attempt, Batch, FinalOutcome, Gate, RecordResult
from worker.ledger.runs import RunStore
from worker.luascripts import Arg, Call

#: record.lua's answers besides 0, 1, 2 and -1.
CHAIN_MOVED = -3
COMPACTED = -4
#: gate.lua's answer when the chain moved.
GATE_CHAIN_MOVED = -9
_MAX_TRIES = 50


class _GateAsk:
    """One thread's wait at a batch's gate: its answer (or the error) once a group served it."""

    __slots__ = ("holder", "intent", "result", "task_id")

    def __init__(self, task_id: str, intent: Attempt, holder: str) -> None:
        self.task_id = task_id
        self.intent = intent
        self.holder = holder
        self.result: Gate | BaseException | None = None


@dataclass(frozen=True, slots=True)
class RecordItem:
    batch: Batch
    task_id: str
    attempt: Attempt | None = None
    final: FinalOutcome | None = None
    bump: str = ""


class ChainCache:
    """The chain state this process last saw per batch, and a lock per batch for its writes."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, int], ChainState | None] = {}
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._asks: dict[tuple[str, int], list[_GateAsk]] = {}
        self._guard = threading.Lock()

    def lock(self, run_id: str, number: int) -> threading.Lock:
        with self._guard:
            if len(self._locks) > 10_000:  # a long-lived worker: forget batches long done
                self._locks.clear()
                self._states.clear()
            return self._locks.setdefault((run_id, number), threading.Lock())

    def ask(self, run_id: str, number: int, ask: _GateAsk) -> None:
        """Queue a thread's gate ask for the batch (served by :meth:`OutcomeStore.gate`)."""
        with self._guard:
            self._asks.setdefault((run_id, number), []).append(ask)

    def take(self, run_id: str, number: int, holder: str) -> list[_GateAsk]:
        """The batch's queued asks of ``holder``, in the order they came; others stay queued."""
        with self._guard:
            queued = self._asks.pop((run_id, number), [])
            mine = [a for a in queued if a.holder == holder]
            rest = [a for a in queued if a.holder != holder]
            if rest:
                self._asks[(run_id, number)] = rest
            return mine

    def get(self, run_id: str, number: int) -> tuple[bool, ChainState | None]:
        key = (run_id, number)
        return key in self._states, self._states.get(key)

    def put(self, run_id: str, number: int, state: ChainState | None) -> None:
        self._states[(run_id, number)] = state

    def forget(self, run_id: str, number: int) -> None:
        self._states.pop((run_id, number), None)


class OutcomeStore(RunStore, CompactStore):
    chain: Chain
    chains: ChainCache
    durability: Durability = Durability()  # replicas that must hold a record (worker.ledger.durable)

    def _chain_state(self, run_id: str, number: int) -> ChainState | None:
        known, state = self.chains.get(run_id, number)
        if not known:
            state = ChainState.decode(decode(self.redis.hget(self.keys.chain(run_id), str(number)) or b""))
            self.chains.put(run_id, number, state)
        return state

    def _record_call(
        self,
        item: RecordItem,
        state: ChainState | None,
        failure_ratio: float,
        failure_min_attempts: int,
        *,
        full: bool = False,
    ) -> tuple[list[str], list[Any], ChainState | None]:
        """The keys and arguments of one record.lua call, and the chain state if all of it is written.

        The head after the final alone (the attempt a repeat) is rare: computed only when ``full``
        (record.lua asks for it by answering that the chain moved).
        """
        batch, task_id, attempt, final = item.batch, item.task_id, item.attempt, item.final
        run_id, number = batch.run_id, batch.number
        start = state or self.chain.genesis(run_id, number)
        att_json = attempt.to_json() if attempt else ""
        sent = attempt.sent_second if attempt else None  # counted in the run's rate record
        fin_json = final.to_json() if final else ""
        after_a = self.chain.step(start, task_id, ATTEMPT, att_json) if attempt else start
        after_af = self.chain.step(after_a, task_id, FINAL, fin_json) if final else after_a
        if final and attempt and not full:
            after_f = None
        else:
            after_f = self.chain.step(start, task_id, FINAL, fin_json) if final else start
        keys = [
            self.keys.run(run_id),
            self.keys.outcomes(run_id, number),
            self.keys.attempts(run_id, number),
            self.keys.open_batches(run_id),
            self.keys.rps(run_id),
            self.keys.chain(run_id),
            self.keys.compacted(run_id),
        ]
        args = [
            task_id,
            att_json,
            final.outcome.value if final else "",
            fin_json,
            number,
            len(batch.task_ids),
            item.bump,
            failure_ratio,
            failure_min_attempts,
            "" if sent is None else str(sent),
            attempt.marker if attempt is not None else "",
            state.encode() if state else "",
            start.count,
            after_a.encode(),
            after_af.encode(),
            after_f.encode() if after_f else "",
        ]
        return keys, args, after_af

    def record_many(
        self,
        items: Sequence[RecordItem],
        *,
        failure_ratio: float = 1.0,
        failure_min_attempts: int = 1_000_000_000,
        transaction: bool = True,
    ) -> list[int]:
        """Write records in order, in pipelines, each joined to its batch's chain; record.lua's
        code per item (0, 1, 2 or -1).

        Raises any Redis error; every write is idempotent, so sending all of them again is safe.
        """
        codes: list[int | None] = [None] * len(items)
        todo = list(range(len(items)))
        retried: set[int] = set()  # sent again: with every head it may need
        tries = 0
        while todo:
            tries += 1
            batches = sorted({(items[i].batch.run_id, items[i].batch.number) for i in todo})
            locks = [self.chains.lock(r, n) for r, n in batches]
            for lock in locks:
                lock.acquire()
            try:
                todo = self._record_round(items, todo, codes, failure_ratio, failure_min_attempts, transaction, retried)
                retried.update(todo)
            finally:
                for lock in reversed(locks):
                    lock.release()
            if todo and tries >= _MAX_TRIES:
                raise RuntimeError(f"the audit chain of {items[todo[0]].batch.run_id} keeps moving: not written")
        return [int(c or 0) for c in codes]

    def _record_round(
        self,
        items: Sequence[RecordItem],
        todo: list[int],
        codes: list[int | None],
        failure_ratio: float,
        failure_min_attempts: int,
        transaction: bool,
        retried: set[int],
    ) -> list[int]:
        calls: list[Call] = []
        expected: dict[tuple[str, int], ChainState | None] = {}
        for i in todo:
            b = items[i].batch
            key = (b.run_id, b.number)
            state = expected[key] if key in expected else self._chain_state(*key)
            keys, args, after = self._record_call(
                items[i], state, failure_ratio, failure_min_attempts, full=i in retried
            )
            calls.append(("record", keys, args))
            expected[key] = after
        try:
            replies = self.scripts.run(calls, transaction=transaction)
        except BaseException:
            for key in expected:  # applied or not, nobody knows: read it afresh next time
                self.chains.forget(*key)
            raise
        again = []
        expand: dict[tuple[str, int], Batch] = {}
        for i, reply in zip(todo, replies, strict=True):
            code, current = int(reply[0]), decode(reply[1])
            b = items[i].batch
            if code in (CHAIN_MOVED, COMPACTED):
                again.append(i)
            if code == COMPACTED:
                expand[(b.run_id, b.number)] = b
            else:
                self.chains.put(b.run_id, b.number, ChainState.decode(current))
            codes[i] = code
        for b in expand.values():
            # A late write (a job that lost its lease) after the run ended: the batch goes back to
            # its live hashes and is compacted again when that job lets it go.
            structlog.get_logger(__name__).info("late record for a compacted batch", run_id=b.run_id, batch=b.number)
            self.expand_batch(b)
        return again

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
    ) -> RecordResult:
        """Append an attempt and/or write the final outcome, with counters and the chain, in one atomic step."""
        item = RecordItem(batch, task_id, attempt, final, bump)
        (result,) = self.record_many(
            [item], failure_ratio=failure_ratio, failure_min_attempts=failure_min_attempts, transaction=False
        )
        confirm(self.redis, self.durability)  # too few replicas hold it: raises (the write is idempotent)
        if result == 2:
            self.on_run_over(batch.run_id)
        return RecordResult(written=result >= 1, duplicate=result == -1, run_over=result == 2)

    def gate(self, batch: Batch, task_id: str, intent: Attempt, holder: str) -> Gate:
        """Record that a DELETE is about to leave, if it still may (see ``lua/gate.lua``).

        Raises any Redis error: the caller then sends nothing. Safe to repeat (same intent, same
        answer, counted once), which is what makes redis-py's retry of a lost reply harmless.

        Group commit: the threads of this process waiting at the same batch's gate are served by
        one pipeline of gate.lua calls, sent by whichever of them takes the batch's lock first
        (one round trip instead of one each). Each call still checks the run, the lease and the
        holds as it runs, and each thread sends its DELETE only after its own answer, so nothing
        about the gate's guarantees changes; only the round trips are shared.
        """
        ask = _GateAsk(task_id, intent, holder)
        run_id, number = batch.run_id, batch.number
        self.chains.ask(run_id, number, ask)
        with self.chains.lock(run_id, number):
            if ask.result is None:
                group = self.chains.take(run_id, number, holder)
                self._gate_group(batch, group)
        result = ask.result
        if isinstance(result, BaseException):
            raise result
        assert result is not None  # set by whichever thread served the group
        return result

    def _gate_group(self, batch: Batch, group: list[_GateAsk]) -> None:
        """Pass the gate for every ask of ``group`` (one batch, one holder); under the batch's lock.

        The intents are chained one after the other, in one pipeline; an ask refused (a held
        task) leaves the chain where it was, so the asks after it answer that the chain moved and
        go again in the next round, from the state the script answered.
        """
        run_id, number = batch.run_id, batch.number
        keys = [
            self.keys.run(run_id),
            self.keys.attempts(run_id, number),
            self.keys.lease(run_id, number),
            self.keys.rps(run_id),
            self.keys.protected_tasks,
            self.keys.protected_shares,
            self.keys.chain(run_id),
        ]
        todo = group
        try:
            for _ in range(_MAX_TRIES):
                state = self._chain_state(run_id, number)
                calls: list[Call] = []
                for ask in todo:
                    start = state or self.chain.genesis(run_id, number)
                    after = self.chain.step(start, ask.task_id, INTENT, ask.intent.key)
                    args: list[Arg] = [
                        ask.task_id,
                        ask.intent.to_json(),
                        ask.intent.marker,
                        ask.holder,
                        batch.share_id,
                        number,
                        state.encode() if state else "",
                        start.count,
                        after.encode(),
                    ]
                    calls.append(("gate", keys, args))
                    state = after
                wait = None
                if self.durability.min_replicas > 0:
                    wait = ("WAIT", self.durability.min_replicas, self.durability.timeout_ms)
                try:
                    replies = self.scripts.run(calls, then=wait)
                except BaseException:
                    self.chains.forget(run_id, number)
                    raise
                acknowledged = int(replies.pop()) if self.durability.min_replicas > 0 else None
                todo = self._gate_answers(batch, todo, replies, acknowledged)
                if not todo:
                    return
            raise RuntimeError(f"the audit chain of {run_id} batch {number} keeps moving: intent not written")
        except BaseException as exc:
            for ask in todo:
                if ask.result is None:
                    ask.result = exc
            if not isinstance(exc, Exception):
                raise

    def _gate_answers(
        self, batch: Batch, todo: list[_GateAsk], replies: list[Any], acknowledged: int | None
    ) -> list[_GateAsk]:
        """Each ask's answer from its reply; the asks whose chain moved, to go again."""
        again = []
        for ask, reply in zip(todo, replies, strict=True):
            code = int(reply[0])
            if code in (1, GATE_CHAIN_MOVED):
                self.chains.put(batch.run_id, batch.number, ChainState.decode(decode(reply[1])))
            if code == GATE_CHAIN_MOVED:
                again.append(ask)
                continue
            ask.result = Gate(code)
            if ask.result is Gate.GO:
                try:
                    require(acknowledged, self.durability)  # fewer replicas: raises, nothing is sent
                except NotReplicatedError as exc:
                    ask.result = exc
        return again

    def attempt_history(self, run_id: str, number: int, task_ids: Iterable[str]) -> dict[str, list[Attempt]]:
        """The attempts already recorded for these tasks (earlier deliveries of the batch)."""
        ids = list(task_ids)
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.attempts(run_id, number), ids)
        pipe.hexists(self.keys.compacted(run_id), str(number))
        raw, compacted = pipe.execute()
        lines = {tid: decode(value) for tid, value in zip(ids, raw, strict=True) if value}
        if compacted and (batch := self.batch(run_id, number)) is not None:
            _, stored = self.batch_records(batch)
            lines = {tid: stored[tid] for tid in ids if tid in stored}
        return {tid: [Attempt.from_json(line) for line in value.split("\n") if line] for tid, value in lines.items()}

    def finished_tasks(self, run_id: str, number: int) -> set[str]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hkeys(self.keys.outcomes(run_id, number))
        pipe.hexists(self.keys.compacted(run_id), str(number))
        live, compacted = pipe.execute()
        if compacted and (batch := self.batch(run_id, number)) is not None:
            return set(self.batch_records(batch)[0])
        return {decode(k) for k in live}

    def mark_share_missing(self, run_id: str, share_id: str, description: str) -> None:
        self.redis.hsetnx(self.keys.bad_shares(run_id), share_id, description)

    def share_missing(self, run_id: str, share_id: str) -> str | None:
        value = self.redis.hget(self.keys.bad_shares(run_id), share_id)
        return decode(value) if value is not None else None
