"""A batch job's life when it does not end well: it leaves mid-way, or it keeps dying.

* Leaving (Celery's soft time limit): the job's threads belong to the process's pool and outlive
  the job; without a stop they would go on deleting after the lease was given back, while the
  reconciler may already have handed the batch to another job. The soft limit's exception is
  raised on cue, as Celery's signal handler raises it in the job's thread.
* Dying (a process killed on the batch, e.g. out of memory): Celery hands the job back each time
  (``task_reject_on_worker_lost``); after ``SFS_CLEANUP_MAX_JOB_DELIVERIES`` deliveries in a row
  with no progress the batch's remaining tasks fail, so the run ends and says why.

Real Redis, the real fake API over HTTP and the real job code throughout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from billiard.exceptions import SoftTimeLimitExceeded

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from scheduler.planner import plan_run
from scheduler.policy import Policy
from worker.ledger import Audit
from worker.models import TaskInfo
from worker.purge import BatchJob
from worker.purge import job as purge_job
from worker.retry import RetryPolicy
from worker.runtime import Runtime
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.integration


@contextmanager
def _runtime(settings: Settings, audit: Audit, name: str) -> Iterator[Runtime]:
    """A worker process's runtime (client, limiter, pool) for jobs run in this test's process."""
    rt = Runtime(
        settings=settings, redis=audit.redis, audit=audit, retry=RetryPolicy.from_settings(settings), worker_name=name
    )
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    config = FakeConfig(shares=1, tasks_per_share=60, seed=5, deleting_seconds=0.0, latency_ms=100.0)
    with FakeApi(config) as api:
        yield api


def test_a_job_past_its_soft_time_limit_sends_nothing_more_and_leaves_the_rest_pending(
    redis_url: str, fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(
        redis_url=redis_url,
        api_endpoint=fake.url,
        project_id=fake.project_id,
        auth_token=fake.token,
        rate_limit=1000.0,
        rate_ramp_s=0.0,
        batch_size=60,
        batch_concurrency=4,
    )
    client = redis.Redis.from_url(redis_url)
    audit = Audit(client)
    share = fake.share_ids[0]
    # Finished tasks only: each is shown, then deleted (a running one would be skipped unsent).
    items = [
        TaskInfo(fake.project_id, share, t["task_id"]) for t in fake.tasks(share) if t["status"] in ("SUCCESS", "FAIL")
    ]
    total = len(items)
    plan = plan_run(
        audit,
        settings,
        Policy(older_than="0s"),
        items,
        run_id="r-leave",
        dry_run=False,
        trigger="test",
        source="test",
        explicit=True,
    )
    assert plan.batches == 1

    real_wait = futures.wait
    calls = {"n": 0}

    def wait_then_time_limit(fs: Any, timeout: float | None = None, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # the job's wait for its tasks: the soft limit strikes 0.35 s in
            real_wait(fs, timeout=0.35)
            raise SoftTimeLimitExceeded()
        return real_wait(fs, timeout=timeout, **kw)

    monkeypatch.setattr(purge_job, "wait", wait_then_time_limit)
    with _runtime(settings, audit, "t") as rt:
        with pytest.raises(SoftTimeLimitExceeded):
            BatchJob(rt, "r-leave", 0, "holder-1").run()
        left_at = time.monotonic()
        sent_then = sum(fake.stats()["requests_by_method_status"].get("DELETE", {}).values())
        time.sleep(1.0)  # the pool's threads are still alive: do they go on?
        sent_later = sum(fake.stats()["requests_by_method_status"].get("DELETE", {}).values())

    outcomes = audit.finished_tasks("r-leave", 0)
    print(
        f"\n  left the batch after {calls['n']} waits; DELETEs sent {sent_then}, one second later {sent_later}; "
        f"outcomes recorded {len(outcomes)} of {total}; lease {audit.lease_holder('r-leave', 0)!r}"
    )
    # 4 threads x (100 ms show + 100 ms DELETE): a handful sent in 0.35 s, each one's outcome recorded.
    assert 4 <= sent_then < total
    assert sent_later == sent_then, "no DELETE after the job left its batch"
    assert len(outcomes) == len(fake.deleted()) == sent_then
    assert audit.lease_holder("r-leave", 0) is None, "the lease was given back"
    assert audit.run("r-leave")["status"] == "running", "the run goes on: the rest is for the next job"
    assert time.monotonic() - left_at < 5

    # The next delivery of the batch deletes exactly the rest.
    with _runtime(settings, audit, "t2") as rt2:
        result = BatchJob(rt2, "r-leave", 0, "holder-2").run()
    assert result.outcomes["deleted"] == total - sent_then
    assert len(fake.deleted()) == total
    assert fake.stats()["duplicate_deletes"] == 0


_DOOMED_JOB = """
import sys
from worker.purge import BatchJob
from worker.runtime import get_runtime
from worker.settings import Settings, load_settings

url, api, project, token = sys.argv[1:5]
settings = load_settings(redis_url=url, api_endpoint=api, project_id=project, auth_token=token, rate_ramp_s=0)
print("started", flush=True)
BatchJob(get_runtime(settings), "r-doomed", 0, "doomed").run()
"""


def test_a_batch_whose_job_keeps_dying_fails_its_rest_after_the_delivery_limit(redis_url: str) -> None:
    config = FakeConfig(shares=1, tasks_per_share=30, seed=6, deleting_seconds=0.0, latency_ms=3000.0)
    with FakeApi(config) as fake:
        settings = load_settings(
            redis_url=redis_url, api_endpoint=fake.url, project_id=fake.project_id, auth_token=fake.token
        )
        client = redis.Redis.from_url(redis_url)
        audit = Audit(client)
        share = fake.share_ids[0]
        items = [TaskInfo(fake.project_id, share, t["task_id"]) for t in fake.tasks(share)]
        plan_run(
            audit, settings, Policy(), items, run_id="r-doomed", dry_run=False, trigger="t", source="t", explicit=True
        )
        root = Path(__file__).parents[2]
        for _ in range(settings.max_job_deliveries):
            before = fake.stats()["requests_total"]
            job = subprocess.Popen(
                [sys.executable, "-c", _DOOMED_JOB, redis_url, fake.url, fake.project_id, fake.token],
                cwd=root,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(root)},
            )
            assert job.stdout is not None and job.stdout.readline().strip() == "started"
            deadline = time.monotonic() + 20
            while fake.stats()["requests_total"] == before and time.monotonic() < deadline:
                time.sleep(0.05)  # killed once its first calls are in flight, as by the OOM killer
            job.send_signal(signal.SIGKILL)
            job.wait(timeout=10)
            client.delete("sfs:run:{r-doomed}:lease:0")  # as if its lease had run out
        assert audit.finished_tasks("r-doomed", 0) == set(), "no delivery got anywhere"
        sent = fake.stats()["requests_total"]

        with _runtime(settings, audit, "t") as rt:
            result = BatchJob(rt, "r-doomed", 0, "next").run()
        records = list(audit.task_records(audit.batch("r-doomed", 0)))
        reasons = {r.final.reason for r in records if r.final is not None}
        print(f"\n  after {settings.max_job_deliveries} lost deliveries: {dict(result.outcomes)}; {reasons}")
        assert result.outcomes["failed"] == len(items)
        assert reasons == {"job_lost: the batch's job was lost 5 times in a row with no progress (worker killed?)"}
        assert fake.stats()["requests_total"] == sent, "the given-up delivery sent nothing"
        assert [e["batch"] for e in audit.events(kind="batch_given_up")] == ["0"]


def test_deliveries_that_make_progress_do_not_count_towards_giving_up(redis_url: str) -> None:
    audit = Audit(redis.Redis.from_url(redis_url))
    counts = [audit.note_delivery("r1", 3, pending) for pending in (100, 100, 100, 60, 60, 10, 10, 10)]
    # A delivery that finds fewer tasks pending than the last one starts the count again.
    assert counts == [1, 2, 3, 1, 2, 1, 2, 3]
    assert audit.note_delivery("r1", 4, 100) == 1, "per batch"
