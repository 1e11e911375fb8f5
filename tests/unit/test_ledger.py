"""The ledger in a real Redis: one final outcome per task, counters that add up, run endings."""

from __future__ import annotations

import time

import redis

from worker.ledger import UNSENT, Attempt, Audit, Batch, FinalOutcome, Outcome, RecordBuffer, RunStatus


def planned_run(audit: Audit, run_id: str, tasks_per_batch: list[int]) -> list[Batch]:
    audit.create_run(run_id, {"trigger": "test"})
    batches = [(n, f"share-{n}", [f"t{n}x{i}" for i in range(count)]) for n, count in enumerate(tasks_per_batch)]
    audit.add_batches(run_id, batches)
    status = audit.freeze(run_id, sum(tasks_per_batch), batches=len(batches))
    assert status is RunStatus.RUNNING
    found = [audit.batch(run_id, n) for n in range(len(batches))]
    assert all(b is not None for b in found)
    return [b for b in found if b is not None]


def final(outcome: Outcome) -> FinalOutcome:
    return FinalOutcome(outcome, time.time(), attempts=1, status=202, request_id="rid")


def test_a_final_outcome_is_written_once_and_counted_once(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    (batch,) = planned_run(audit, "r1", [3])
    first = audit.record(batch, "t0x0", final=final(Outcome.DELETED))
    again = audit.record(batch, "t0x0", final=final(Outcome.ALREADY_GONE))
    assert first is not None and first.written and not first.duplicate
    assert again is not None and again.duplicate and not again.written
    assert audit.counts("r1")[Outcome.DELETED] == 1
    assert audit.counts("r1")[Outcome.ALREADY_GONE] == 0


def test_the_last_outcome_ends_the_run_and_totals_add_up(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    b0, b1 = planned_run(audit, "r2", [2, 1])
    assert audit.open_batches("r2") == [0, 1]
    audit.record(b0, "t0x0", final=final(Outcome.DELETED))
    audit.record(b0, "t0x1", final=final(Outcome.FAILED))
    assert audit.open_batches("r2") == [1]
    assert audit.status("r2") is RunStatus.RUNNING
    result = audit.record(b1, "t1x0", final=final(Outcome.SKIPPED))
    assert result is not None and result.run_over
    meta = audit.run("r2")
    assert meta["status"] == "finished" and meta.get("finished_at")
    assert sum(audit.counts("r2").values()) == int(meta["selected"]) == 3
    # Retention applied at the end, to the batches compacted when the run ended.
    assert redis_client.ttl(audit.keys.compacted("r2")) > 0
    assert not redis_client.exists(audit.keys.outcomes("r2", 0), audit.keys.attempts("r2", 0))


def test_attempts_are_all_kept_with_their_request_ids(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    (batch,) = planned_run(audit, "r3", [1])
    for n, status in enumerate([500, 503], start=1):
        audit.record(batch, "t0x0", attempt=Attempt(n, time.time(), status, "retryable", f"rid{n}"), bump="retries")
    audit.record(
        batch,
        "t0x0",
        attempt=Attempt(3, time.time(), 202, "ok", "rid3"),
        final=FinalOutcome(Outcome.DELETED, time.time(), 3, 202, request_id="rid3"),
    )
    (record,) = list(audit.task_records(batch))
    assert [a.request_id for a in record.attempts] == ["rid1", "rid2", "rid3"]
    assert record.final is not None and record.final.outcome is Outcome.DELETED
    row = record.as_row("p")
    assert row["attempts"] == 3 and row["request_ids"] == ["rid1", "rid2", "rid3"]
    meta = audit.run("r3")
    assert int(meta["attempts"]) == 3 and int(meta["retries"]) == 2
    assert audit.rate_profile("r3")["requests"] == 3


def test_failure_threshold_stops_the_run(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    (batch,) = planned_run(audit, "r4", [10])
    for i in range(3):
        audit.record(batch, f"t0x{i}", final=final(Outcome.DELETED), failure_ratio=0.5, failure_min_attempts=6)
    for i in range(3, 6):
        audit.record(batch, f"t0x{i}", final=final(Outcome.FAILED), failure_ratio=0.5, failure_min_attempts=6)
    assert audit.status("r4") is RunStatus.RUNNING  # 3 of 6: not above 50%
    audit.record(batch, "t0x6", final=final(Outcome.FAILED), failure_ratio=0.5, failure_min_attempts=6)
    meta = audit.run("r4")
    assert meta["status"] == "stopping"
    assert "failure threshold" in meta["reason"] and "4 of 7" in meta["reason"]
    for i in range(7, 10):
        audit.record(batch, f"t0x{i}", final=final(Outcome.ABORTED))
    assert audit.status("r4") is RunStatus.ABORTED


def test_cancel_ends_as_cancelled(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    (batch,) = planned_run(audit, "r5", [2])
    assert audit.request_stop("r5", RunStatus.CANCELLED, "cancelled by operator")
    assert not audit.request_stop("r5", RunStatus.CANCELLED, "twice")
    audit.record(batch, "t0x0", final=final(Outcome.ABORTED))
    audit.record(batch, "t0x1", final=final(Outcome.ABORTED))
    assert audit.status("r5") is RunStatus.CANCELLED
    assert audit.run("r5")["reason"] == "cancelled by operator"


def test_an_empty_plan_is_finished_at_once(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    audit.create_run("r6", {})
    assert audit.freeze("r6", 0) is RunStatus.FINISHED


def test_rejected_input_counts_toward_selected(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    audit.create_run("r7", {})
    audit.add_rejected("r7", [{"line": 3, "reason": "bad"}, {"line": 9, "reason": "worse"}])
    assert audit.freeze("r7", 2) is RunStatus.FINISHED
    assert audit.counts("r7")[Outcome.REJECTED] == 2
    assert [r["line"] for r in audit.rejected("r7")] == [3, 9]


def test_record_buffer_writes_everything_by_close_and_keeps_order(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    (batch,) = planned_run(audit, "r8", [200])
    buffer = RecordBuffer(audit, flush_s=0.05, max_items=16)
    for i in range(200):
        task = f"t0x{i}"
        buffer.add(batch, task, attempt=Attempt(1, time.time(), 500, "retryable", f"a{i}"), bump="retries")
        buffer.add(batch, task, attempt=Attempt(2, time.time(), 202, "ok", f"b{i}"), final=final(Outcome.DELETED))
    buffer.add(batch, "t0x0", final=final(Outcome.FAILED))  # a duplicate delivery's outcome
    buffer.close()
    assert audit.status("r8") is RunStatus.FINISHED
    assert audit.counts("r8")[Outcome.DELETED] == 200
    assert buffer.duplicates == 1
    records = list(audit.task_records(batch))
    assert all([a.request_id for a in r.attempts] == [f"a{r.task_id[3:]}", f"b{r.task_id[3:]}"] for r in records)


def test_leases_are_exclusive_and_only_the_holder_renews_or_releases(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    planned_run(audit, "r9", [1])
    assert audit.take_lease("r9", 0, "a", 30)
    assert not audit.take_lease("r9", 0, "b", 30)
    assert not audit.renew_lease("r9", 0, "b", 30)
    audit.release_lease("r9", 0, "b")
    assert audit.lease_holder("r9", 0) == "a"
    assert audit.renew_lease("r9", 0, "a", 30)
    audit.release_lease("r9", 0, "a")
    assert audit.lease_holder("r9", 0) is None


def test_live_protection(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    redis_client.sadd(audit.keys.protected_tasks, "t2")
    assert audit.protected("s1", ["t1", "t2"]) == {"t2": "protected_task"}
    redis_client.sadd(audit.keys.protected_shares, "s1")
    assert audit.protected("s1", ["t1", "t2"]) == {"t1": "protected_share", "t2": "protected_share"}


def test_rate_record_keeps_requests_per_second_over_the_run(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    planned_run(audit, "r10", [1])
    rps = audit.keys.rps("r10")
    redis_client.hset(rps, mapping={"1000": 5, "1001": 9, "1003": 2})  # second 1002 sent nothing
    profile = audit.rate_profile("r10")
    assert profile["per_second"] == [[1000, 5], [1001, 9], [1002, 0], [1003, 2]]
    assert profile["busiest_second"] == 9
    assert profile["seconds"] == 4 and profile["requests"] == 16 and profile["average_rps"] == 4.0


def test_a_request_is_counted_in_the_second_it_was_sent_not_when_its_record_is_written(
    redis_client: redis.Redis,
) -> None:
    """Records are flushed in batches after the answers: counted at the write, the shows of a run
    at its limit landed in the next second beside that second's DELETEs, and the report's busiest
    second read 21 at a limit of 20."""
    audit = Audit(redis_client)
    (batch,) = planned_run(audit, "r12", [4])
    second = 1_700_000_000
    buffer = RecordBuffer(audit, flush_s=0)
    # Sent late in one second, answered in the next; sent early, answered in the same one.
    buffer.add(batch, "t0x0", attempt=Attempt(1, second + 0.95 + 0.2, 200, "ok", "r1", latency_ms=200.0, op="show"))
    buffer.add(batch, "t0x1", attempt=Attempt(1, second + 0.1 + 0.02, 200, "ok", "r2", latency_ms=20.0, op="show"))
    # Answered after two seconds (a slow server): still the second it left in.
    buffer.add(batch, "t0x2", attempt=Attempt(1, second + 2.5, 500, "retryable", "r3", latency_ms=2000.0, op="show"))
    # A DELETE that never left (its intent completed as unsent) is no request.
    buffer.add(batch, "t0x3", attempt=Attempt(1, second + 0.5, 0, UNSENT))
    buffer.close()
    assert audit.rate_profile("r12")["per_second"] == [[second, 3]]
    assert int(audit.run("r12")["attempts"]) == 4  # every attempt is still recorded


def test_an_ended_run_is_kept_as_long_as_its_kind_says(redis_client: redis.Redis) -> None:
    from worker.ledger.retention import DAY_S, Retention

    audit = Audit(redis_client, prefix="ret", retention_s=Retention.days(90, 180, 7))
    kinds = {
        "clean": ({"status": "finished"}, 90),
        "failures": ({"status": "finished", "n:failed": "2"}, 180),
        "aborted": ({"status": "aborted"}, 180),
        "cancelled": ({"status": "cancelled"}, 180),
        "dry": ({"status": "finished", "dry_run": "1"}, 7),
    }
    for run_id, (fields, days) in kinds.items():
        batches = planned_run(audit, run_id, [2, 3])
        audit.record(batches[1], batches[1].task_ids[0], final=final(Outcome.DELETED))
        redis_client.hset(audit.keys.run(run_id), mapping=fields)
        audit.on_run_over(run_id)
        for key in (audit.keys.run(run_id), audit.keys.plan(run_id), audit.keys.compacted(run_id)):
            ttl = redis_client.ttl(key)
            assert days * DAY_S - 5 <= ttl <= days * DAY_S, (run_id, key, ttl)
    assert audit.retention_s == 180 * DAY_S  # the longest: what notifications keep their marks for
