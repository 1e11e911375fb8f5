"""Writes that may be repeated change nothing twice.

redis-py sends a command again when its reply was lost (the worker's client retries once on a
``ConnectionError``, see :func:`worker.runtime.redis_client`). The server has then run it twice.
Every ledger write (attempts, counters, rejected lines, the request-rate record) must be
idempotent, so the ledger shows each attempt once and its counters always equal a recount of
its records.

A real Redis, reached through :class:`tests.support.proxy.DropReplyProxy`, which forwards each
request and, when armed, hangs up on the client instead of delivering the reply: the write
happened, the client does not know, and retries it.

The ledger calls are all in :class:`Ledger` (one place to adapt when the write API changes).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from tests.support.proxy import DropReplyProxy, load_ledger_scripts
from worker.ledger import Attempt, Audit, Batch, FinalOutcome, Outcome, RecordBuffer, RecordResult
from worker.runtime import redis_client
from worker.settings import Settings

pytestmark = pytest.mark.integration

SHARE = "share-0001"


# --- the ledger calls under test, in one place -------------------------------------------------
@dataclass
class Ledger:
    """One run in the ledger, written through the proxy the way a worker writes it."""

    audit: Audit
    run_id: str
    batches: list[Batch] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)  # what the test asked to record, once each

    @classmethod
    def plan(cls, audit: Audit, sizes: list[int], rejected: int = 0) -> Ledger:
        run_id = f"test-{secrets.token_hex(4)}"
        audit.create_run(run_id, {"trigger": "test", "batches": len(sizes)})
        plan = [(n, SHARE, [f"task-{n}-{i}" for i in range(size)]) for n, size in enumerate(sizes)]
        audit.add_batches(run_id, plan)
        audit.freeze(run_id, sum(sizes) + rejected)
        batches = [b for b in (audit.batch(run_id, n) for n in range(len(sizes))) if b is not None]
        return cls(audit, run_id, batches)

    def attempt(self, batch: Batch, task_id: str, n: int, verdict: str = "retryable", status: int = 500) -> Attempt:
        return Attempt(
            n=n,
            at=time.time(),
            status=status,
            verdict=verdict,
            request_id=f"req-{secrets.token_hex(6)}",
            worker="test-holder",
        )

    @staticmethod
    def final(outcome: Outcome, attempts: int = 1) -> FinalOutcome:
        return FinalOutcome(outcome, time.time(), attempts, 202 if outcome is Outcome.DELETED else None)

    def _count(self, attempt: Attempt | None, final: FinalOutcome | None, bump: str) -> None:
        if attempt is not None:
            self.sent["attempts"] += 1
            self.sent["requests"] += 1
        if final is not None:
            self.sent[f"n:{final.outcome.value}"] += 1
            self.sent["finals"] += 1
        if bump:
            self.sent[bump] += 1

    def record(
        self,
        batch: Batch,
        task_id: str,
        *,
        attempt: Attempt | None = None,
        final: FinalOutcome | None = None,
        bump: str = "",
    ) -> RecordResult | None:
        self._count(attempt, final, bump)
        return self.audit.record(batch, task_id, attempt=attempt, final=final, bump=bump)

    def buffer(self) -> RecordBuffer:
        """A buffer that sends only when told (its flusher's period is an hour)."""
        return RecordBuffer(self.audit, flush_s=3600, max_items=1000)

    def buffered(self, buf: RecordBuffer, batch: Batch, task_id: str, **record: Any) -> None:
        self._count(record.get("attempt"), record.get("final"), record.get("bump", ""))
        buf.add(batch, task_id, **record)

    def add_rejected(self, rows: list[dict[str, Any]]) -> int:
        self.sent["n:rejected"] += len(rows)
        self.sent["finals"] += len(rows)
        return self.audit.add_rejected(self.run_id, rows)


# --- reading the ledger back (straight from Redis, not through the proxy) -----------------------
def recount(audit: Audit, run_id: str) -> dict[str, Any]:
    """The run's counters as stored, and the same figures recounted from its records."""
    meta = audit.run(run_id)
    stored = {k: int(v) for k, v in meta.items() if k in ("attempts", "finals", "retries", "throttled")}
    stored |= {k: int(v) for k, v in meta.items() if k.startswith("n:")}
    stored["requests"] = audit.rate_profile(run_id)["requests"]

    counted: Counter[str] = Counter()
    attempt_lines: dict[str, list[str]] = {}
    for batch in audit.iter_batches(run_id):
        for rec in audit.task_records(batch):
            attempt_lines[rec.task_id] = [a.to_json() for a in rec.attempts]
            counted["attempts"] += len(rec.attempts)
            counted["requests"] += len(rec.attempts)
            counted["retries"] += sum(a.verdict == "retryable" for a in rec.attempts)
            counted["throttled"] += sum(a.verdict == "throttled" for a in rec.attempts)
            if rec.final is not None:
                counted[f"n:{rec.final.outcome.value}"] += 1
                counted["finals"] += 1
    rejected = list(audit.rejected(run_id))
    if rejected:
        counted["n:rejected"] += len(rejected)
        counted["finals"] += len(rejected)
    return {
        "stored": {k: v for k, v in stored.items() if v},
        "counted": {k: v for k, v in counted.items() if v},
        "attempt_lines": attempt_lines,
        "rejected": rejected,
    }


def assert_ledger_exact(reader: Audit, ledger: Ledger) -> dict[str, Any]:
    """Each attempt once, each counter equal to a recount and to what was recorded."""
    seen = recount(reader, ledger.run_id)
    for task_id, lines in seen["attempt_lines"].items():
        assert len(lines) == len(set(lines)), f"{task_id}: an attempt is in the audit twice: {lines}"
    sent = {k: v for k, v in ledger.sent.items() if v}
    assert seen["stored"] == seen["counted"], f"counters {seen['stored']} != recount {seen['counted']}"
    assert seen["counted"] == sent, f"ledger {seen['counted']} != what was recorded once {sent}"
    return seen


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def proxy(redis_url: str) -> Iterator[DropReplyProxy]:
    with DropReplyProxy(redis_url) as p:
        yield p


@pytest.fixture
def audit(proxy: DropReplyProxy, redis_url: str) -> Iterator[Audit]:
    """The ledger through the proxy, on a client built exactly as a worker builds its own."""
    load_ledger_scripts(redis_url)
    client = redis_client(Settings(redis_url=proxy.url))
    yield Audit(client, prefix=f"t{secrets.token_hex(3)}")
    client.close()


@pytest.fixture
def reader(redis_url: str, audit: Audit) -> Iterator[Audit]:
    """The same ledger read straight from Redis (no proxy in between)."""
    client = redis.Redis.from_url(redis_url)
    yield Audit(client, prefix=audit.keys.prefix)
    client.close()


def test_the_proxy_loses_one_reply_and_redis_py_sends_the_command_again(proxy: DropReplyProxy, redis_url: str) -> None:
    """The fault itself, on a write that is idempotent by nature: the premise of the tests below."""
    client = redis_client(Settings(redis_url=proxy.url))
    direct = redis.Redis.from_url(redis_url)
    key = f"probe:{secrets.token_hex(4)}"
    try:
        client.ping()
        proxy.drop_reply_after("INCRBY")  # redis-py sends INCR as INCRBY
        assert client.incr(key) == 2  # ran once, reply lost, ran again: the client sees the second
        assert proxy.dropped == 1 and proxy.connections == 2
        assert int(direct.get(key) or 0) == 2
    finally:
        direct.delete(key)
        direct.close()
        client.close()


def test_an_attempt_whose_reply_is_lost_is_recorded_once(proxy: DropReplyProxy, audit: Audit, reader: Audit) -> None:
    ledger = Ledger.plan(audit, [3])
    batch = ledger.batches[0]
    proxy.drop_reply_after("EVALSHA")
    ledger.record(batch, "task-0-0", attempt=ledger.attempt(batch, "task-0-0", 1), bump="retries")
    assert proxy.dropped == 1, "the reply of the attempt's write was not lost: the test proved nothing"
    ledger.record(batch, "task-0-1", attempt=ledger.attempt(batch, "task-0-1", 1), bump="retries")
    seen = assert_ledger_exact(reader, ledger)
    assert len(seen["attempt_lines"]["task-0-0"]) == 1
    # The request-rate record counts the one request sent, not two.
    assert reader.rate_profile(ledger.run_id)["requests"] == 2


def test_a_final_outcome_whose_reply_is_lost_counts_once_and_reports_written(
    proxy: DropReplyProxy, audit: Audit, reader: Audit
) -> None:
    """The caller must learn that its write happened: a retried final seen as "a duplicate
    delivery" would be counted as one, and the last final of a run would never close it."""
    ledger = Ledger.plan(audit, [2])
    batch = ledger.batches[0]
    ledger.record(
        batch, "task-0-0", attempt=ledger.attempt(batch, "task-0-0", 1, "ok", 202), final=ledger.final(Outcome.DELETED)
    )
    proxy.drop_reply_after("EVALSHA")
    result = ledger.record(
        batch, "task-0-1", attempt=ledger.attempt(batch, "task-0-1", 1, "ok", 202), final=ledger.final(Outcome.DELETED)
    )
    assert proxy.dropped == 1
    assert_ledger_exact(reader, ledger)
    meta = reader.run(ledger.run_id)
    assert meta["status"] == "finished" and meta["selected"] == "2"
    assert result is not None
    assert (result.written, result.duplicate, result.run_over) == (True, False, True), result
    # The run's end was noticed: retention applied and the event logged, as for any run.
    assert [e for e in reader.events(kind="run_over") if e.get("run_id") == ledger.run_id], "no run_over event"
    assert reader.redis.ttl(reader.keys.run(ledger.run_id)) > 0


def test_a_pipeline_of_records_whose_reply_is_lost_is_applied_once(
    proxy: DropReplyProxy, audit: Audit, reader: Audit
) -> None:
    """RecordBuffer sends many records in one MULTI/EXEC; a retried EXEC must not apply them again."""
    ledger = Ledger.plan(audit, [4, 4])
    buf = ledger.buffer()  # everything queued, sent in one pipeline at flush
    for batch in ledger.batches:
        for i, task_id in enumerate(batch.task_ids):
            ledger.buffered(
                buf, batch, task_id, attempt=ledger.attempt(batch, task_id, 1, "throttled", 429), bump="throttled"
            )
            if i % 2:
                continue
            ledger.buffered(
                buf,
                batch,
                task_id,
                attempt=ledger.attempt(batch, task_id, 2, "ok", 202),
                final=ledger.final(Outcome.DELETED, 2),
            )
    proxy.drop_reply_after("EXEC")
    buf.flush()
    assert proxy.dropped == 1
    assert buf.duplicates == 0, f"{buf.duplicates} outcomes written by this very flush were taken for duplicates"
    seen = assert_ledger_exact(reader, ledger)
    assert all(len(lines) in (1, 2) for lines in seen["attempt_lines"].values())

    # The rest of the run, and its end, also through a lost reply.
    for batch in ledger.batches:
        for i, task_id in enumerate(batch.task_ids):
            if i % 2:
                ledger.buffered(buf, batch, task_id, final=ledger.final(Outcome.ALREADY_GONE))
    proxy.drop_reply_after("EXEC")
    buf.close()
    assert proxy.dropped == 2
    assert buf.duplicates == 0
    assert_ledger_exact(reader, ledger)
    meta = reader.run(ledger.run_id)
    assert meta["status"] == "finished"
    assert [e for e in reader.events(kind="run_over") if e.get("run_id") == ledger.run_id], "no run_over event"


def test_rejected_lines_whose_reply_is_lost_are_stored_once(proxy: DropReplyProxy, audit: Audit, reader: Audit) -> None:
    ledger = Ledger.plan(audit, [2], rejected=3)
    rows = [{"source": "manifest.jsonl", "line": n, "reason": "bad task id", "raw": f"x{n}"} for n in (1, 4, 9)]
    proxy.drop_reply_after("EVALSHA")
    assert ledger.add_rejected(rows) == 3
    assert proxy.dropped == 1
    seen = assert_ledger_exact(reader, ledger)
    assert [r["line"] for r in seen["rejected"]] == [1, 4, 9]
    stored = [json.loads(raw) for raw in reader.redis.lrange(reader.keys.rejected(ledger.run_id), 0, -1)]
    assert len(stored) == 3


def test_counters_equal_a_recount_after_a_mixed_run_with_lost_replies(
    proxy: DropReplyProxy, audit: Audit, reader: Audit
) -> None:
    """Many writes, every third reply lost: the ledger still equals what happened, once."""
    ledger = Ledger.plan(audit, [5, 5, 5])
    writes = 0
    for batch in ledger.batches:
        for i, task_id in enumerate(batch.task_ids):
            for n in range(1, i % 3 + 1):  # 0, 1 or 2 retried attempts first
                writes += 1
                if writes % 3 == 0:
                    proxy.drop_reply_after("EVALSHA")
                ledger.record(batch, task_id, attempt=ledger.attempt(batch, task_id, n), bump="retries")
            writes += 1
            if writes % 3 == 0:
                proxy.drop_reply_after("EVALSHA")
            outcome = (Outcome.DELETED, Outcome.ALREADY_GONE, Outcome.FAILED)[i % 3]
            ledger.record(
                batch,
                task_id,
                attempt=ledger.attempt(batch, task_id, i % 3 + 1, "ok", 202),
                final=ledger.final(outcome, i % 3 + 1),
            )
    assert proxy.dropped == writes // 3
    assert_ledger_exact(reader, ledger)
    meta = reader.run(ledger.run_id)
    assert meta["status"] == "finished"
    assert int(meta["selected"]) == sum(reader.counts(ledger.run_id).values())
