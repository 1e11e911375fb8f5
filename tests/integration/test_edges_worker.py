"""The deletion job at its edges: what it must never send, and what it must never fail to record.

Real Redis, the real fake API over HTTP and the real job code (``BatchJob``) in this process.

* Checks fail closed: a task planned without its status and age (a bare manifest entry) is
  deleted only after a show answered 200 with a task that passes the run's *whole* policy; a show
  that never succeeds sends no DELETE and ends the task ``failed`` (``recheck_failed``).
* Holds are read at delete time: a hold placed while the job runs stops the DELETEs after it.
* Our delete, our record: a task whose DELETE took effect but whose answer was lost is
  ``deleted`` (confirmed by the later "gone" answer), never ``already_gone``.
* Write-ahead: while Redis refuses writes, no DELETE leaves; nothing the fake accepted is
  missing from the audit, and no buffered record is dropped.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from scheduler.planner import PlanResult, plan_run
from scheduler.policy import Policy
from worker.ledger import Audit, Outcome, TaskRecord
from worker.models import TaskInfo, parse_time
from worker.purge import CONFIRMED, RECHECK_FAILED, BatchJob
from worker.ratelimit import FleetLimiter
from worker.retry import RetryPolicy
from worker.runtime import Runtime
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.integration


def _settings(redis_url: str, fake: FakeApi, **extra: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "api_endpoint": fake.url,
        "project_id": fake.project_id,
        "auth_token": fake.token,
        "rate_limit": 1000.0,
        "rate_ramp_s": 0.0,
        "batch_size": 200,
        "batch_concurrency": 8,
        "retry_backoff_base_s": 0.01,
        "retry_backoff_max_s": 0.05,
    }
    return load_settings(**(base | extra))


@contextmanager
def _runtime(settings: Settings, audit: Audit, **limiter: Any) -> Iterator[Runtime]:
    rt = Runtime(
        settings=settings, redis=audit.redis, audit=audit, retry=RetryPolicy.from_settings(settings), worker_name="t"
    )
    if limiter:
        rt._limiter = FleetLimiter.from_settings(audit.redis, settings, **limiter)
    try:
        yield rt
    finally:
        rt.close()


def _records(audit: Audit, run_id: str) -> dict[str, TaskRecord]:
    return {r.task_id: r for b in audit.iter_batches(run_id) for r in audit.task_records(b)}


def _deletes_by_task(fake: FakeApi) -> Counter[str]:
    return Counter(d["task_id"] for d in fake.deleted())


def _finished(fake: FakeApi, share: str, limit: int | None = None) -> list[TaskInfo]:
    """The share's finished tasks with a readable end time, as full entries (status and end time)."""
    tasks = [
        TaskInfo(fake.project_id, share, t["task_id"], status=t["status"], end_time=parse_time(t["end_time"]))
        for t in fake.tasks(share)
        if t["status"] in ("SUCCESS", "FAIL") and parse_time(t.get("end_time"))
    ]
    return tasks[:limit]


def _plan(
    audit: Audit, settings: Settings, items: list[TaskInfo], run_id: str, *, older_than: str = "0s", bare: bool = False
) -> PlanResult:
    """Plan the entries (any age by default): what the test is about happens at delete time.

    ``bare``: the entries are a manifest's, IDs only, which the worker shows before deleting.
    """
    return plan_run(
        audit,
        settings,
        Policy(older_than=older_than),
        iter(items),
        run_id=run_id,
        dry_run=False,
        trigger="manifest" if bare else "t",
        source="manifest:test" if bare else "",
        trust_bare_entries=bare,
    )


def _run_all(rt: Runtime, run_id: str, batches: int) -> None:
    for number in range(batches):
        BatchJob(rt, run_id, number, f"holder-{number}").run()


def _assert_counters_add_up(audit: Audit, run_id: str) -> dict[str, str]:
    meta = audit.run(run_id)
    counts = audit.counts(run_id)
    assert meta["status"] == "finished", meta
    assert int(meta["selected"]) == sum(counts.values()), (meta, counts)
    return meta


# --- checks fail closed -----------------------------------------------------------------------


@pytest.fixture
def mixed_fake() -> Iterator[FakeApi]:
    # 120 tasks of every kind: running, finished long ago and recently, with and without a
    # readable end time (the seed makes some end times unreadable).
    with FakeApi(FakeConfig(shares=1, tasks_per_share=120, seed=21, deleting_seconds=0.0)) as api:
        yield api


def test_bare_entries_are_deleted_only_if_they_pass_the_whole_policy(redis_url: str, mixed_fake: FakeApi) -> None:
    fake = mixed_fake
    settings = _settings(redis_url, fake)
    audit = Audit(redis.Redis.from_url(redis_url))
    share = fake.share_ids[0]
    tasks = fake.tasks(share)
    cutoff = datetime.now(UTC) - timedelta(days=7)

    def eligible(t: dict[str, Any]) -> bool:
        ended = parse_time(t.get("end_time"))
        return t["status"] in ("SUCCESS", "FAIL") and ended is not None and ended <= cutoff

    young = [t for t in tasks if t["status"] in ("SUCCESS", "FAIL") and not eligible(t)]
    running = [t for t in tasks if t["status"] not in ("SUCCESS", "FAIL")]
    assert young and running and any(eligible(t) for t in tasks), "the seed must give every kind"
    # A manifest of bare entries (IDs only): the planner cannot judge them, the worker must.
    items = [TaskInfo(fake.project_id, share, t["task_id"]) for t in tasks]
    plan = _plan(audit, settings, items, "r-bare", older_than="7d", bare=True)
    with _runtime(settings, audit) as rt:
        _run_all(rt, "r-bare", plan.batches)

    deleted = _deletes_by_task(fake)
    records = _records(audit, "r-bare")
    print(f"\n  {len(tasks)} bare entries: {len(deleted)} deleted, young {len(young)}, running {len(running)}")
    assert set(deleted) == {t["task_id"] for t in tasks if eligible(t)}, "exactly the old finished tasks"
    for t in young + running:
        record = records[t["task_id"]]
        assert record.final is not None and record.final.outcome is Outcome.SKIPPED, record
        assert record.final.reason in {"too_young", "end_time_unknown"} or (record.final.reason or "").startswith(
            "status_changed:"
        ), record.final
        assert [a.op for a in record.attempts] == ["show"], "shown, never deleted"
    _assert_counters_add_up(audit, "r-bare")


@pytest.fixture
def down_fake() -> Iterator[FakeApi]:
    with FakeApi(FakeConfig(shares=1, tasks_per_share=40, seed=3, deleting_seconds=0.0)) as api:
        yield api


def test_a_show_that_never_succeeds_sends_no_delete(redis_url: str, down_fake: FakeApi) -> None:
    fake = down_fake
    settings = _settings(redis_url, fake, max_retries=2)
    audit = Audit(redis.Redis.from_url(redis_url))
    share = fake.share_ids[0]
    finished = [t for t in fake.tasks(share) if t["status"] in ("SUCCESS", "FAIL")]
    items = [TaskInfo(fake.project_id, share, t["task_id"]) for t in finished]
    plan = _plan(audit, settings, items, "r-down", bare=True)
    fake.configure(outage=True, outage_status=503)  # every call answers 503, shows included
    # The circuit is not what is tested here: it must not hold the shows back for minutes.
    with _runtime(settings, audit, circuit_min_calls=10**9) as rt:
        _run_all(rt, "r-down", plan.batches)

    by_status = fake.stats()["requests_by_method_status"]
    records = _records(audit, "r-down")
    print(f"\n  requests while every show failed: {by_status}")
    assert "DELETE" not in by_status, "no DELETE may leave without a successful show"
    assert by_status["GET"] == {"503": 3 * len(items)}, "each show tried once and retried twice"
    for record in records.values():
        assert record.final is not None and record.final.outcome is Outcome.FAILED
        assert record.final.reason == RECHECK_FAILED
        assert {a.op for a in record.attempts} == {"show"}
    _assert_counters_add_up(audit, "r-down")


# --- holds are read at delete time ------------------------------------------------------------


@pytest.fixture
def slow_fake() -> Iterator[FakeApi]:
    with FakeApi(FakeConfig(shares=1, tasks_per_share=60, seed=4, deleting_seconds=0.0)) as api:
        yield api


def test_a_hold_placed_while_the_job_runs_stops_the_deletes_after_it(redis_url: str, slow_fake: FakeApi) -> None:
    fake = slow_fake
    settings = _settings(redis_url, fake, rate_limit=10.0, batch_concurrency=4)
    audit = Audit(redis.Redis.from_url(redis_url))
    share = fake.share_ids[0]
    finished = _finished(fake, share, limit=30)
    plan = plan_run(
        audit,
        settings,
        Policy(older_than="0s"),
        iter(finished),
        run_id="r-hold",
        dry_run=False,
        trigger="t",
        source="t",
    )
    assert plan.planned == 30 and plan.batches == 1
    held = [t.task_id for t in finished[15:]]
    with _runtime(settings, audit) as rt:
        job = threading.Thread(target=BatchJob(rt, "r-hold", 0, "holder").run)
        job.start()
        deadline = time.monotonic() + 20
        while len(fake.deleted()) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        audit.redis.sadd(audit.keys.protected_tasks, *held)  # `sfs-cleanup protect add --task ...`
        job.join(60)
        assert not job.is_alive()

    deleted = _deletes_by_task(fake)
    records = _records(audit, "r-hold")
    late = [t for t in held if t in deleted]
    print(f"\n  deleted before the hold {len(deleted)}; held tasks deleted anyway: {len(late)}")
    # A request already past its gate when the hold landed may still go: at most one per thread.
    assert len(late) <= settings.batch_concurrency
    for task_id in held:
        if task_id not in deleted:
            final = records[task_id].final
            assert final is not None and final.outcome is Outcome.SKIPPED and final.reason == "protected_task"
    assert len([t for t in held if t not in deleted]) >= len(held) - settings.batch_concurrency
    _assert_counters_add_up(audit, "r-hold")


# --- our delete, our record -------------------------------------------------------------------


@pytest.fixture
def lossy_fake() -> Iterator[FakeApi]:
    # 40% of DELETEs take effect and then lose their answer (the connection closes): a lost 202.
    config = FakeConfig(
        shares=1, tasks_per_share=80, seed=6, deleting_seconds=0.0, drop_ratio=0.4, drop_after_effect=True, fault_seed=9
    )
    with FakeApi(config) as api:
        yield api


def test_a_lost_answer_then_gone_is_our_delete(redis_url: str, lossy_fake: FakeApi) -> None:
    fake = lossy_fake
    settings = _settings(redis_url, fake, max_retries=12)
    audit = Audit(redis.Redis.from_url(redis_url))
    share = fake.share_ids[0]
    finished = _finished(fake, share)
    plan = plan_run(
        audit,
        settings,
        Policy(older_than="0s"),
        iter(finished),
        run_id="r-lost",
        dry_run=False,
        trigger="t",
        source="t",
    )
    with _runtime(settings, audit) as rt:
        _run_all(rt, "r-lost", plan.batches)

    records = _records(audit, "r-lost")
    outcomes = Counter(r.final.outcome.value for r in records.values() if r.final)
    confirmed = [r for r in records.values() if r.final and (r.final.reason or "").startswith(CONFIRMED)]
    print(f"\n  outcomes {dict(outcomes)}; confirmed by a later answer: {len(confirmed)}")
    assert outcomes == {"deleted": len(finished)}, "every task we deleted is ours: none already_gone"
    assert set(_deletes_by_task(fake)) == set(records)
    assert confirmed, "the seed loses some answers"
    for record in confirmed:
        ops = [(a.op, a.status) for a in record.attempts]
        assert ops[0] == ("delete", 0), ops  # the first DELETE's answer never came
        assert record.final is not None and record.final.status in (400, 404)
    _assert_counters_add_up(audit, "r-lost")


# --- write-ahead ------------------------------------------------------------------------------


@pytest.fixture
def steady_fake() -> Iterator[FakeApi]:
    with FakeApi(FakeConfig(shares=1, tasks_per_share=150, seed=8, deleting_seconds=0.0, latency_ms=20.0)) as api:
        yield api


def test_no_delete_leaves_while_redis_refuses_writes_and_no_record_is_dropped(
    redis_url: str, steady_fake: FakeApi
) -> None:
    fake = steady_fake
    settings = _settings(redis_url, fake, rate_limit=40.0, batch_concurrency=8)
    client = redis.Redis.from_url(redis_url)
    audit = Audit(client)
    share = fake.share_ids[0]
    finished = _finished(fake, share, limit=80)
    _plan(audit, settings, finished, "r-oom")
    admin = redis.Redis.from_url(redis_url)
    old = admin.config_get("maxmemory*")
    try:
        with _runtime(settings, audit) as rt:
            job = threading.Thread(target=BatchJob(rt, "r-oom", 0, "holder").run)
            job.start()
            deadline = time.monotonic() + 20
            while len(fake.deleted()) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            # Out of memory: Redis refuses every write (the limiter's, the gate's, the ledger's).
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")
            refused_at = time.time()
            time.sleep(3.0)
            admin.config_set("maxmemory", old.get("maxmemory", "0"))
            restored_at = time.time()
            job.join(90)
            assert not job.is_alive()
    finally:
        admin.config_set("maxmemory", old.get("maxmemory", "0"))
        admin.config_set("maxmemory-policy", old.get("maxmemory-policy", "noeviction"))

    arrivals = [float(d["arrived"]) for d in fake.deleted()]
    during = [a for a in arrivals if refused_at + 0.2 < a < restored_at]
    records = _records(audit, "r-oom")
    print(f"\n  DELETEs before the refusal {sum(a <= refused_at for a in arrivals)}, during it {len(during)}")
    assert during == [], "no DELETE while Redis could not take its write-ahead record"
    deleted = _deletes_by_task(fake)
    assert set(deleted) == set(records) and all(n == 1 for n in deleted.values())
    for record in records.values():
        assert record.final is not None and record.final.outcome is Outcome.DELETED, record
        assert record.final.request_id, "the answer's request ID is in the audit"
        assert [a.verdict for a in record.attempts] == ["ok"], record.attempts
    meta = _assert_counters_add_up(audit, "r-oom")
    assert int(meta["attempts"]) == len(records), "each attempt counted once"
