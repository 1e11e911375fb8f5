"""The audit chain's pieces on their own: entries recovered from stored records, the keyed and
unkeyed hashes, masked records, the compact encoding, and the chain of real writes in Redis."""

from __future__ import annotations

import time

import redis

from worker.ledger import Attempt, Audit, Batch, FinalOutcome, Outcome, RunStatus
from worker.ledger.chain import ATTEMPT, FINAL, INTENT, Chain, check_batch, entries, masked, split_seq, with_seq
from worker.ledger.compact import decode_batch_records, encode_batch_records


def test_an_intent_completed_in_place_keeps_its_own_entry() -> None:
    stored = {"t1": with_seq('{"k":"d1","n":1,"s":204,"v":"deleted"}', 3, 1)}
    found = sorted(entries({"t1": with_seq('{"o":"deleted"}', 4)}, stored), key=lambda e: e.seq or 0)
    assert [(e.seq, e.kind, e.body) for e in found] == [
        (1, INTENT, "d1"),
        (3, ATTEMPT, '{"k":"d1","n":1,"s":204,"v":"deleted"}'),
        (4, FINAL, '{"o":"deleted"}'),
    ]
    assert split_seq(stored["t1"]) == ('{"k":"d1","n":1,"s":204,"v":"deleted"}', 3, 1)


def test_the_key_changes_every_head_and_a_masked_record_hashes_the_same() -> None:
    plain, keyed, other = Chain(), Chain(b"k1"), Chain(b"k2")
    heads = {c.step(c.genesis("r", 0), "t", FINAL, '{"o":"failed"}').head for c in (plain, keyed, other)}
    assert len(heads) == 3
    body = '{"o":"failed","m":"token SECRET echoed"}'
    assert keyed.step(keyed.genesis("r", 0), "t", FINAL, body) == keyed.step(
        keyed.genesis("r", 0), "t", FINAL, split_seq(masked(with_seq(body, 1)))[0]
    )
    assert "SECRET" not in masked(with_seq(body, 1))


def test_a_gap_a_twin_and_an_unnumbered_record_are_each_named() -> None:
    chain = Chain(b"k")
    state = chain.step(chain.genesis("r", 0), "t", FINAL, '{"o":"deleted"}')
    ok = check_batch(chain, "r", 0, {"t": with_seq('{"o":"deleted"}', 1)}, {}, state)
    assert ok.problem is None
    gap = check_batch(chain, "r", 0, {"t": with_seq('{"o":"deleted"}', 2)}, {}, state)
    assert gap.problem and "no record at chain position 1" in gap.problem
    twin = check_batch(chain, "r", 0, {"t": with_seq('{"o":"deleted"}', 1), "u": with_seq('{"o":"x"}', 1)}, {}, state)
    assert twin.problem and "two records hold chain position 1" in twin.problem
    bare = check_batch(chain, "r", 0, {"t": '{"o":"deleted"}'}, {}, state)
    assert bare.problem and "no chain position" in bare.problem
    moved = check_batch(chain, "r", 1, {"t": with_seq('{"o":"deleted"}', 1)}, {}, state)
    assert moved.problem and "do not hash" in moved.problem, "a batch's records moved to another batch"


def test_the_compact_form_holds_every_record_byte_for_byte() -> None:
    finals = {"a": with_seq('{"o":"deleted"}', 3), "stray": with_seq('{"o":"failed"}', 5)}
    attempts = {"a": with_seq('{"k":"d1","v":"sending"}', 1) + "\n" + with_seq('{"k":"d2","v":"x"}', 2), "b": "x"}
    blob = encode_batch_records(["a", "b", "c"], finals, attempts)
    assert decode_batch_records(["a", "b", "c"], blob) == (finals, attempts)


def test_real_writes_chain_in_order_and_verify_in_both_forms(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client, audit_key=b"unit-key")
    audit.create_run("rc", {"trigger": "cli"})
    audit.add_batches("rc", [(0, "s", ["t0", "t1"])])
    assert audit.freeze("rc", 2, batches=1) is RunStatus.RUNNING
    assert audit.take_lease("rc", 0, "me", 60)
    batch = Batch("rc", 0, "s", ("t0", "t1"))
    now = time.time()
    audit.gate(batch, "t0", Attempt(1, now, 0, "sending", worker="me"), "me")
    # Another process writes the batch meanwhile: this one's cached chain state is stale.
    Audit(redis_client, audit_key=b"unit-key").record(batch, "t1", final=FinalOutcome(Outcome.SKIPPED, now))
    audit.record(batch, "t0", attempt=Attempt(1, now, 204, "deleted", "rid", worker="me"))
    assert audit.verify_run("rc").problems == []
    audit.release_lease("rc", 0, "me")
    audit.record(batch, "t0", final=FinalOutcome(Outcome.DELETED, now, 1, 204, request_id="rid"))
    assert audit.status("rc") is RunStatus.FINISHED
    assert redis_client.hexists(audit.keys.compacted("rc"), "0"), "compacted when the run ended"
    checked = audit.verify_run("rc")
    assert checked.intact and checked.entries == 4 and checked.head == audit.run("rc")["chain_head"]
    assert not Audit(redis_client, audit_key=b"another").verify_run("rc").intact


def test_a_second_compaction_never_replaces_the_first_with_less(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    audit.create_run("rz", {"trigger": "cli"})
    audit.add_batches("rz", [(0, "s", ["t0"])])
    assert audit.freeze("rz", 1, batches=1) is RunStatus.RUNNING
    batch = Batch("rz", 0, "s", ("t0",))
    audit.record(batch, "t0", final=FinalOutcome(Outcome.DELETED, time.time()))
    blob = audit.raw_redis.hget(audit.keys.compacted("rz"), "0")
    # A slower process that read the (now deleted) hashes as empty, then tries to compact.
    keys = [audit.keys.outcomes("rz", 0), audit.keys.attempts("rz", 0), audit.keys.lease("rz", 0)]
    keys += [audit.keys.chain("rz"), audit.keys.compacted("rz"), audit.keys.run("rz")]
    state = redis_client.hget(audit.keys.chain("rz"), "0")
    empty = encode_batch_records(["t0"], {}, {})
    assert audit._compact(keys=keys, args=[0, state, empty]) == 0
    assert audit.compact_run("rz") == 0
    assert audit.raw_redis.hget(audit.keys.compacted("rz"), "0") == blob
    assert audit.verify_run("rz").intact


def test_threads_waiting_at_a_gate_are_served_together_and_the_chain_holds(redis_client: redis.Redis) -> None:
    """Group commit: five threads queue at one batch's gate while it is busy; one pipeline serves
    them all, a held task among them is refused alone, and the chain verifies afterwards."""
    import threading

    from worker.ledger import Gate

    audit = Audit(redis_client, audit_key=b"unit-key")
    tasks = [f"t{i}" for i in range(5)]
    audit.create_run("rg", {"trigger": "cli"})
    audit.add_batches("rg", [(0, "s", tasks)])
    assert audit.freeze("rg", 5, batches=1) is RunStatus.RUNNING
    assert audit.take_lease("rg", 0, "me", 60)
    redis_client.sadd(audit.keys.protected_tasks, "t2")
    batch = Batch("rg", 0, "s", tuple(tasks))
    groups: list[int] = []
    serve = audit._gate_group
    audit._gate_group = lambda b, group: (groups.append(len(group)), serve(b, group))[1]  # type: ignore[method-assign]
    answers: dict[str, Gate] = {}

    def ask(task: str) -> None:
        answers[task] = audit.gate(batch, task, Attempt(1, time.time(), 0, "sending", worker="me"), "me")

    lock = audit.chains.lock("rg", 0)
    with lock:  # the gate is busy: every thread queues its ask behind it
        threads = [threading.Thread(target=ask, args=(t,)) for t in tasks]
        for thread in threads:
            thread.start()
        while sum(len(v) for v in audit.chains._asks.values()) < len(tasks):
            time.sleep(0.01)
    for thread in threads:
        thread.join(5)
    assert groups == [5]
    assert answers == {t: Gate.PROTECTED_TASK if t == "t2" else Gate.GO for t in tasks}
    now = time.time()
    for task in tasks:
        if task != "t2":
            audit.record(batch, task, attempt=Attempt(1, now, 204, "deleted", "rid", worker="me"))
    assert audit.verify_run("rg").problems == []
    assert int(audit.run("rg")["attempts"]) == 4  # the held task's intent was never written


def test_a_gate_whose_intent_too_few_replicas_hold_says_so_and_nothing_may_be_sent(
    redis_client: redis.Redis,
) -> None:
    import pytest

    from worker.ledger import Gate
    from worker.ledger.durable import Durability, NotReplicatedError

    audit = Audit(redis_client)
    audit.create_run("rw", {"trigger": "cli"})
    audit.add_batches("rw", [(0, "s", ["t0", "t1"])])
    assert audit.freeze("rw", 2, batches=1) is RunStatus.RUNNING
    assert audit.take_lease("rw", 0, "me", 60)
    batch = Batch("rw", 0, "s", ("t0", "t1"))
    audit.durability = Durability(min_replicas=1, timeout_ms=50)  # this Redis has no replica
    with pytest.raises(NotReplicatedError, match="0 of 1 required replicas"):
        audit.gate(batch, "t0", Attempt(1, time.time(), 0, "sending", worker="me"), "me")
    audit.durability = Durability()
    assert audit.gate(batch, "t1", Attempt(1, time.time(), 0, "sending", worker="me"), "me") is Gate.GO
