"""A manifest that mixes entries with and without a status: only the bare ones are shown first.

A bare entry (no status, no end time) is planned without the status and age rules, so its task is
shown (GET) just before its delete and skipped unless finished. Entries that carried a status and
an end time went through the whole policy at plan time and need no second look: showing them too
would double the API calls of the run, and the rate limit is the run's budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from scheduler.planner import plan_run
from scheduler.policy import Policy
from worker.ledger import Audit
from worker.models import TaskInfo, parse_time
from worker.purge import BatchJob
from worker.retry import RetryPolicy
from worker.runtime import Runtime
from worker.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    with FakeApi(FakeConfig(shares=1, tasks_per_share=80, seed=8, deleting_seconds=0.0)) as api:
        yield api


def test_only_bare_manifest_entries_are_shown_before_their_delete(redis_url: str, fake: FakeApi) -> None:
    settings = load_settings(
        redis_url=redis_url, api_endpoint=fake.url, project_id=fake.project_id, auth_token=fake.token, batch_size=25
    )
    share = fake.share_ids[0]
    finished = [t for t in fake.tasks(share) if t["status"] in ("SUCCESS", "FAIL") and t.get("end_time")]
    running = [t for t in fake.tasks(share) if t["status"] == "DOING"]
    assert len(finished) >= 40 and running
    with_status = [
        TaskInfo(fake.project_id, share, t["task_id"], status=t["status"], end_time=parse_time(t["end_time"]))
        for t in finished[:20]
    ]
    bare = [TaskInfo(fake.project_id, share, t["task_id"]) for t in finished[20:40] + running[:1]]
    client = redis.Redis.from_url(redis_url)
    audit = Audit(client)
    plan = plan_run(
        audit,
        settings,
        Policy(older_than="0s"),
        iter(with_status[:10] + bare + with_status[10:]),
        run_id="r-mixed",
        dry_run=False,
        trigger="manifest",
        source="test",
        trust_bare_entries=True,
        now=datetime.now(UTC),
    )
    assert plan.planned == 41
    rt = Runtime(
        settings=settings, redis=client, audit=audit, retry=RetryPolicy.from_settings(settings), worker_name="t"
    )
    try:
        for number in range(plan.batches):
            BatchJob(rt, "r-mixed", number, "holder").run()
    finally:
        rt.close()

    shown = {
        r.task_id
        for b in audit.iter_batches("r-mixed")
        for r in audit.task_records(b)
        if any(a.op == "show" for a in r.attempts)
    }
    deleted = {d["task_id"] for d in fake.deleted()}
    by_status = fake.stats()["requests_by_method_status"]
    print(f"\n  shown {len(shown)} (bare entries {len(bare)}), deleted {len(deleted)}, requests {by_status}")
    assert shown == {t.task_id for t in bare}, "exactly the bare entries were shown first"
    assert by_status["GET"] == {"200": len(bare)}
    assert deleted == {t.task_id for t in with_status + bare[:-1]}, "the running one was shown and skipped"
