"""A stateful property test of the run ledger against a real Redis.

Hypothesis's rule-based state machine interleaves what the fleet does to one run's ledger:
attempts and final outcomes recorded by two job holders, duplicate deliveries, leases taken,
renewed, released and expiring, redelivery of a batch to the other holder (what the reconciler
causes), cancel, and writes whose reply was lost on the wire (so redis-py sends them again; the
proxy of :mod:`tests.support.proxy` makes that happen for real). After every step:

- each task has at most one final outcome, and it is the first one written;
- the run's counters equal a recount of its records, and equal what was recorded, once each;
- a lease has one holder, and nobody else can take or renew it while it lives;
- an ended run has ``selected`` equal to the sum of its outcomes, and a run whose every task
  has an outcome has ended.

Every example uses a fresh key prefix. The ledger calls are those of today's public API
(``Audit.record``, ``RecordBuffer``, ``Audit.add_rejected``, the lease calls).
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.support.proxy import DropReplyProxy, load_ledger_scripts
from worker.ledger import OVER, Attempt, Audit, Batch, FinalOutcome, Outcome, RecordBuffer, RunStatus
from worker.runtime import redis_client
from worker.settings import Settings

pytestmark = pytest.mark.integration

HOLDERS = ("node-a:job-1", "node-b:job-2")
LEASE_S = 30  # expiry is simulated by deleting the key: no example waits for a clock
OUTCOMES = (Outcome.DELETED, Outcome.ALREADY_GONE, Outcome.FAILED, Outcome.SKIPPED)


@dataclass
class Model:
    """What the ledger must show: every write counted once, the first final of each task."""

    finals: dict[str, Outcome] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)  # task -> attempts recorded
    counters: Counter[str] = field(default_factory=Counter)  # retries, throttled, n:rejected
    lease: dict[int, str | None] = field(default_factory=dict)
    stopped: bool = False
    held: bool = False  # frozen for approval: no job runs, nothing is recorded until released
    held_stopped: bool = False  # it was stopped while held (its tasks recorded aborted at once)


@dataclass
class Wiring:
    """Shared by every example of one test: the proxy, a worker's client through it, a direct one."""

    proxy: DropReplyProxy
    client: redis.Redis
    direct: redis.Redis


class LedgerMachine(RuleBasedStateMachine):
    wiring: Wiring | None = None  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        assert self.wiring is not None
        self.proxy = self.wiring.proxy
        self.proxy.disarm()
        self.client = self.wiring.client
        self.direct = self.wiring.direct
        self.audit = Audit(self.client, prefix=f"sm{secrets.token_hex(4)}")
        self.reader = Audit(self.direct, prefix=self.audit.keys.prefix)
        self.model = Model()
        self.run_id = f"run-{secrets.token_hex(3)}"
        self.batches: list[Batch] = []
        self.selected = 0
        self.lost_replies = 0

    def teardown(self) -> None:
        self.proxy.disarm()
        for key in self.direct.scan_iter(match=f"{self.audit.keys.prefix}:*", count=1000):
            self.direct.delete(key)

    # --- the plan ------------------------------------------------------------------------------
    @initialize(
        sizes=st.lists(st.integers(3, 5), min_size=2, max_size=3),
        rejected=st.integers(0, 2),
        held=st.booleans(),
    )
    def plan(self, sizes: list[int], rejected: int, held: bool) -> None:
        self.audit.create_run(self.run_id, {"trigger": "state-machine", "batches": len(sizes)})
        plan = [(n, f"share-{n}", [f"t{n}x{i}" for i in range(size)]) for n, size in enumerate(sizes)]
        self.audit.add_batches(self.run_id, plan)
        if rejected:
            rows = [{"source": "manifest", "line": i, "reason": "bad id", "raw": f"?{i}"} for i in range(rejected)]
            self.audit.add_rejected(self.run_id, rows)
            self.model.counters["n:rejected"] += rejected
        self.selected = sum(sizes) + rejected
        start_as = RunStatus.HELD if held else RunStatus.RUNNING
        assert self.audit.freeze(self.run_id, self.selected, start_as=start_as, hold_reason="test") is start_as
        self.model.held = held
        self.batches = [b for b in (self.audit.batch(self.run_id, n) for n in range(len(sizes))) if b is not None]
        self.model.lease = dict.fromkeys(range(len(self.batches)))

    # --- helpers -------------------------------------------------------------------------------
    def _pick(self, data: st.DataObject) -> tuple[Batch, str]:
        batch = data.draw(st.sampled_from(self.batches), label="batch")
        return batch, data.draw(st.sampled_from(batch.task_ids), label="task")

    def _lose_next_reply(self, lost: bool, command: str = "EVALSHA") -> None:
        if lost:
            self.proxy.drop_reply_after(command)
            self.lost_replies += 1

    def _attempt(self, holder: str, n: int, verdict: str, status: int) -> Attempt:
        return Attempt(n, time.time(), status, verdict, request_id=f"r-{secrets.token_hex(5)}", worker=holder)

    def _expect_record(self, task_id: str, attempt: Attempt | None, final: FinalOutcome | None, bump: str) -> None:
        if attempt is not None:
            self.model.attempts[task_id] += 1
        if bump:
            self.model.counters[bump] += 1
        if final is not None and task_id not in self.model.finals:
            self.model.finals[task_id] = final.outcome

    def _final_for(self, outcome: Outcome, n: int) -> FinalOutcome:
        if self.model.stopped and outcome is not Outcome.DELETED:
            outcome = Outcome.ABORTED  # a job of a stopping run ends what it has not sent as aborted
        return FinalOutcome(outcome, time.time(), n, 202 if outcome is Outcome.DELETED else None)

    # --- rules: recording ----------------------------------------------------------------------
    @precondition(lambda self: not self.model.held)
    @rule(data=st.data(), holder=st.sampled_from(HOLDERS), throttled=st.booleans(), lost=st.booleans())
    def record_attempt(self, data: st.DataObject, holder: str, throttled: bool, lost: bool) -> None:
        """An attempt that did not settle its task (5xx or 429): it will be retried."""
        batch, task_id = self._pick(data)
        verdict, status, bump = ("throttled", 429, "throttled") if throttled else ("retryable", 500, "retries")
        attempt = self._attempt(holder, self.model.attempts[task_id] + 1, verdict, status)
        self._lose_next_reply(lost)
        self.audit.record(batch, task_id, attempt=attempt, bump=bump)
        self._expect_record(task_id, attempt, None, bump)

    @precondition(lambda self: not self.model.held)
    @rule(data=st.data(), holder=st.sampled_from(HOLDERS), outcome=st.sampled_from(OUTCOMES), lost=st.booleans())
    def record_final(self, data: st.DataObject, holder: str, outcome: Outcome, lost: bool) -> None:
        """A task settled, with its last attempt. A task that already had an outcome is a
        duplicate delivery: the write must be refused and change nothing but the audit trail."""
        batch, task_id = self._pick(data)
        had = task_id in self.model.finals
        n = self.model.attempts[task_id] + 1
        attempt = self._attempt(holder, n, "ok" if outcome is Outcome.DELETED else "permanent", 202)
        final = self._final_for(outcome, n)
        self._lose_next_reply(lost)
        result = self.audit.record(batch, task_id, attempt=attempt, final=final)
        self._expect_record(task_id, attempt, final, "")
        assert result is not None
        assert result.written is (not had), (task_id, had, result)
        assert result.duplicate is had, (task_id, had, result)

    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    @precondition(lambda self: bool(self.model.finals))
    def duplicate_delivery(self, data: st.DataObject, outcome: Outcome) -> None:
        """A second delivery of a batch writes a final for a task that already has one."""
        task_id = data.draw(st.sampled_from(sorted(self.model.finals)), label="finished task")
        batch = next(b for b in self.batches if task_id in b.task_ids)
        result = self.audit.record(batch, task_id, final=FinalOutcome(outcome, time.time()))
        assert result is not None and result.duplicate and not result.written

    @precondition(lambda self: not self.model.held)
    @rule(data=st.data(), holder=st.sampled_from(HOLDERS), lost=st.booleans())
    def flush_buffered(self, data: st.DataObject, holder: str, lost: bool) -> None:
        """A job's buffered records of one batch, sent in one MULTI/EXEC pipeline."""
        batch = data.draw(st.sampled_from(self.batches), label="batch")
        tasks = data.draw(st.lists(st.sampled_from(batch.task_ids), min_size=1, max_size=4), label="tasks")
        buf = RecordBuffer(self.audit, flush_s=3600, max_items=1000)
        try:
            for task_id in tasks:
                n = self.model.attempts[task_id] + 1
                if data.draw(st.booleans(), label="final?"):
                    outcome = data.draw(st.sampled_from(OUTCOMES), label="outcome")
                    attempt = self._attempt(holder, n, "ok", 202)
                    final = self._final_for(outcome, n)
                    buf.add(batch, task_id, attempt=attempt, final=final)
                    self._expect_record(task_id, attempt, final, "")
                else:
                    attempt = self._attempt(holder, n, "retryable", 503)
                    buf.add(batch, task_id, attempt=attempt, bump="retries")
                    self._expect_record(task_id, attempt, None, "retries")
            self._lose_next_reply(lost, "EXEC")
        finally:
            buf.close()

    # --- rules: leases, redelivery, cancel -------------------------------------------------------
    @precondition(lambda self: not self.model.held)
    @rule(number=st.integers(0, 2), holder=st.sampled_from(HOLDERS), lost=st.booleans())
    def take_lease(self, number: int, holder: str, lost: bool) -> None:
        if number >= len(self.batches):
            return
        current = self.model.lease[number]
        self._lose_next_reply(lost, "EVAL")
        taken = self.audit.take_lease(self.run_id, number, holder, LEASE_S)
        assert taken is (current in (None, holder)), (number, holder, current)
        if taken:
            self.model.lease[number] = holder

    @precondition(lambda self: not self.model.held)
    @rule(number=st.integers(0, 2), holder=st.sampled_from(HOLDERS), lost=st.booleans())
    def renew_lease(self, number: int, holder: str, lost: bool) -> None:
        if number >= len(self.batches):
            return
        self._lose_next_reply(lost, "EVAL")
        renewed = self.audit.renew_lease(self.run_id, number, holder, LEASE_S)
        assert renewed is (self.model.lease[number] == holder), (number, holder, self.model.lease[number])

    @rule(number=st.integers(0, 2), holder=st.sampled_from(HOLDERS))
    def release_lease(self, number: int, holder: str) -> None:
        if number >= len(self.batches):
            return
        self.audit.release_lease(self.run_id, number, holder)
        if self.model.lease[number] == holder:
            self.model.lease[number] = None

    @rule(number=st.integers(0, 2))
    def lease_expires(self, number: int) -> None:
        """The holder paused longer than the lease (or Redis failed over): the key is gone."""
        if number >= len(self.batches):
            return
        self.direct.delete(self.audit.keys.lease(self.run_id, number))
        self.model.lease[number] = None

    @precondition(lambda self: not self.model.held)
    @rule(number=st.integers(0, 2), holder=st.sampled_from(HOLDERS))
    def redeliver(self, number: int, holder: str) -> None:
        """The reconciler's re-sent job: it takes the free lease, skips what is done, and
        settles the rest (as aborted when the run is stopping)."""
        if number >= len(self.batches) or self.model.lease[number] not in (None, holder):
            return
        batch = self.batches[number]
        assert self.audit.take_lease(self.run_id, number, holder, LEASE_S)
        self.model.lease[number] = holder
        done = self.audit.finished_tasks(self.run_id, number)
        assert done == {t for t in batch.task_ids if t in self.model.finals}
        for task_id in batch.task_ids:
            if task_id in done:
                continue
            final = self._final_for(Outcome.ALREADY_GONE, 0)
            self.audit.record(batch, task_id, final=final)
            self._expect_record(task_id, None, final, "")
        self.audit.release_lease(self.run_id, number, holder)
        self.model.lease[number] = None

    @rule(lost=st.booleans(), expiry=st.booleans())
    def cancel(self, lost: bool, expiry: bool) -> None:
        status = self.reader.status(self.run_id)
        self._lose_next_reply(lost)
        # The reconciler's expiry of an unapproved run stops it only while it is still held.
        changed = self.audit.request_stop(
            self.run_id, RunStatus.CANCELLED, "cancelled by the state machine", only_held=expiry
        )
        # A cancel sent again (its reply lost, or typed twice) answers as the first one did: the
        # run is stopping by this request. Only the state machine's cancels stop runs here.
        stoppable = (RunStatus.HELD,) if expiry else (RunStatus.HELD, RunStatus.RUNNING, RunStatus.STOPPING)
        if expiry and status is RunStatus.STOPPING and self.model.held_stopped:
            stoppable = (RunStatus.STOPPING,)  # the same stop again: it did stop the held run
        assert changed is (status in stoppable), (status, changed, expiry)
        if status in stoppable:
            self.model.stopped = True
        if status is RunStatus.HELD:
            # No job will ever run: the stop itself recorded every task aborted (nothing was sent).
            for batch in self.batches:
                for task_id in batch.task_ids:
                    self.model.finals.setdefault(task_id, Outcome.ABORTED)
            self.model.held = False
            self.model.held_stopped = True

    @rule(lost=st.booleans(), who=st.sampled_from(("ops-a", "ops-b")))
    def approve(self, lost: bool, who: str) -> None:
        status = self.reader.status(self.run_id)
        self._lose_next_reply(lost)
        released = self.audit.release(self.run_id, who, "approve")
        # Only a held run is released, once; the same approval resent (reply lost) answers the same.
        assert released is (status is RunStatus.HELD), (status, released)
        if released:
            self.model.held = False

    # --- invariants ------------------------------------------------------------------------------
    @invariant()
    def no_reply_left_armed(self) -> None:
        # Every armed loss was spent on the write it was meant for.
        assert not self.proxy.armed

    @invariant()
    def one_final_per_task_and_the_first_one_wins(self) -> None:
        if not self.batches:
            return
        stored: dict[str, Outcome] = {}
        for batch in self.batches:
            # Live hashes while the run goes on, the compacted form once it is over: either as stored.
            finals, _ = self.reader.batch_records(batch)
            for task_id, value in finals.items():
                assert task_id in batch.task_ids, f"outcome for {task_id}, not of batch {batch.number}"
                assert task_id not in stored, f"{task_id} has two outcomes"
                stored[task_id] = FinalOutcome.from_json(value).outcome
        assert stored == self.model.finals

    @invariant()
    def counters_equal_a_recount_and_the_writes_made_once(self) -> None:
        if not self.batches:
            return
        meta = self.reader.run(self.run_id)
        counted: Counter[str] = Counter()
        attempts: Counter[str] = Counter()
        for batch in self.batches:
            for rec in self.reader.task_records(batch):
                attempts[rec.task_id] += len(rec.attempts)
                counted["retries"] += sum(a.verdict == "retryable" for a in rec.attempts)
                counted["throttled"] += sum(a.verdict == "throttled" for a in rec.attempts)
                if rec.final is not None:
                    counted[f"n:{rec.final.outcome.value}"] += 1
        counted["n:rejected"] += len(list(self.reader.rejected(self.run_id)))
        counted["attempts"] = sum(attempts.values())
        counted["finals"] = sum(v for k, v in counted.items() if k.startswith("n:"))
        stored = Counter({k: int(v) for k, v in meta.items() if k in counted or k.startswith("n:")})
        stored["requests"] = self.reader.rate_profile(self.run_id)["requests"]
        counted["requests"] = counted["attempts"]
        assert +stored == +counted, f"counters {dict(+stored)} != recount {dict(+counted)}"
        expected = Counter(self.model.counters)
        expected.update(f"n:{o.value}" for o in self.model.finals.values())
        expected["finals"] = len(self.model.finals) + self.model.counters["n:rejected"]
        expected["attempts"] = expected["requests"] = sum(self.model.attempts.values())
        assert +attempts == +self.model.attempts, "an attempt is in the audit twice, or missing"
        assert +counted == +expected, f"ledger {dict(+counted)} != the writes made once {dict(+expected)}"

    @invariant()
    def the_hash_chain_verifies(self) -> None:
        # Every write joined its batch's chain once, in order, however the writers interleaved
        # (lost replies, a lost lease, a late write after the run was compacted).
        if self.batches:
            checked = self.reader.verify_run(self.run_id)
            assert checked.intact, checked.problems

    @invariant()
    def one_holder_per_lease(self) -> None:
        for number, holder in self.model.lease.items():
            raw = self.direct.get(self.reader.keys.lease(self.run_id, number))
            assert (raw.decode() if raw is not None else None) == holder, (number, raw, holder)

    @invariant()
    def an_ended_run_adds_up(self) -> None:
        if not self.batches:
            return
        meta = self.reader.run(self.run_id)
        status = RunStatus(meta["status"])
        total = sum(self.reader.counts(self.run_id).values())
        all_settled = len(self.model.finals) + self.model.counters["n:rejected"] == self.selected
        if status in OVER:
            assert int(meta["selected"]) == total == self.selected, (meta, total)
        assert (status in OVER) is all_settled, (status, len(self.model.finals), self.selected)
        if self.model.stopped and status in OVER:
            assert status is RunStatus.CANCELLED


@pytest.fixture
def wiring(redis_url: str) -> Iterator[Wiring]:
    load_ledger_scripts(redis_url)
    with DropReplyProxy(redis_url, drain_s=0.03) as proxy:
        client = redis_client(Settings(redis_url=proxy.url))
        direct = redis.Redis.from_url(redis_url)
        LedgerMachine.wiring = Wiring(proxy, client, direct)
        try:
            yield LedgerMachine.wiring
        finally:
            LedgerMachine.wiring = None
            client.close()
            direct.close()


def test_the_ledger_holds_its_invariants_under_any_interleaving(wiring: Wiring) -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            database=None,
            # No shrinking: a failing run would spend minutes on it (every example talks to
            # Redis). The failing steps are printed as they ran; add Phase.shrink to minimise them.
            phases=(Phase.explicit, Phase.reuse, Phase.generate),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
