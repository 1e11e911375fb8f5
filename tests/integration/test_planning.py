"""Planning and dispatch without workers: what lands in Redis, the reconciler, and CLI errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    with FakeApi(FakeConfig(shares=3, tasks_per_share=120, seed=3)).start() as api:
        yield api


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings={"SFS_CLEANUP_BATCH_SIZE": "25"})
    yield c
    c.stop()


def test_purge_freezes_the_plan_and_enqueues_one_small_job_per_batch(cluster: Cluster) -> None:
    code, report = cluster.purge_json()
    assert code == 0
    r = cluster.redis()
    assert report["status"] == "running"
    assert r.llen("sfs.delete") == report["batches"] > 3
    message = json.loads(r.lindex("sfs.delete", 0))
    assert message["headers"]["task"] == "sfs.purge_batch"
    assert len(r.lindex("sfs.delete", 0)) < 2000  # jobs carry IDs, not data
    plan = r.hgetall(f"sfs:run:{{{report['run_id']}}}:plan")
    assert sum(len(v.split("|", 1)[1].split(",")) for v in plan.values()) == report["selected"]
    assert all(len(v.split("|", 1)[1].split(",")) <= 25 for v in plan.values())


def test_reconciler_resends_only_batches_the_queue_lost(cluster: Cluster) -> None:
    from scheduler.context import Context
    from scheduler.dispatch import reconcile_run
    from worker.settings import load_settings

    _, report = cluster.purge_json()
    run_id, batches = report["run_id"], report["batches"]
    ctx = Context(load_settings(redis_url=cluster.redis_url, reconcile_after_s=60))
    # Jobs still queued: nothing can be called lost, however old.
    assert reconcile_run(ctx.app, ctx.audit, ctx.settings, run_id, now=10**10) == 0
    # The queue loses everything (a broker accident): after the deadline, every open batch is re-sent once.
    cluster.redis().delete("sfs.delete")
    assert reconcile_run(ctx.app, ctx.audit, ctx.settings, run_id) == 0  # not stale yet
    assert reconcile_run(ctx.app, ctx.audit, ctx.settings, run_id, now=10**10) == batches
    assert cluster.redis().llen("sfs.delete") == batches
    # A batch a worker holds a lease on is never re-sent.
    cluster.redis().delete("sfs.delete")
    ctx.audit.take_lease(run_id, 0, "someone", 600)
    assert reconcile_run(ctx.app, ctx.audit, ctx.settings, run_id, now=10**10) == batches - 1


def test_a_share_that_cannot_be_listed_is_refused_and_the_others_are_planned(cluster: Cluster, fake: FakeApi) -> None:
    missing = "0b9e0c1e-0000-4000-8000-000000000000"
    shares = ",".join([*fake.share_ids, missing])
    code, report = cluster.purge_json("--dry-run", SFS_CLEANUP_SHARE_IDS=shares)
    assert code == 0
    assert report["outcomes"]["rejected"] == 1
    assert report["outcomes"]["would_delete"] > 0
    rows = [json.loads(x) for x in cluster.cli("audit", "export", report["run_id"], check=True).stdout.splitlines()]
    (refused,) = [r for r in rows if r["outcome"] == "rejected"]
    assert "listing failed" in refused["reason"] and "SFS.TURBO.0002" in refused["reason"]


def test_user_errors_are_one_line_each_and_send_nothing(cluster: Cluster, fake: FakeApi, tmp_path: Path) -> None:
    result = cluster.cli("purge", "--manifest", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: manifest") and "Traceback" not in result.stderr

    policy = tmp_path / "policy.yaml"
    policy.write_text("statuses: [DOING]\nmax_deletions: -3\n")
    result = cluster.cli("purge", "--policy", str(policy))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 2 and all(line.startswith("error: ") for line in lines)
    assert any("statuses" in line for line in lines) and any("max_deletions" in line for line in lines)

    result = cluster.cli("runs", "show", "no-such-run")
    assert result.returncode == 2 and "no run" in result.stderr

    result = cluster.cli("runs", "list", SFS_CLEANUP_REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 6  # something the command needs is unavailable: not the user's input
    assert "Redis is unreachable" in result.stderr and "Traceback" not in result.stderr
    assert fake.stats()["requests_by_method_status"].get("DELETE", {}) == {}


def test_planning_that_fails_midway_leaves_an_aborted_run_not_a_stuck_one(redis_client: redis.Redis) -> None:
    from scheduler.planner import plan_run
    from scheduler.policy import Policy
    from worker.ledger import Audit
    from worker.models import TaskInfo
    from worker.settings import load_settings

    def inventory() -> Iterator[TaskInfo]:
        yield TaskInfo("p1", "s1", "t1", status="SUCCESS")
        raise RuntimeError("listing blew up")

    audit = Audit(redis_client)
    with pytest.raises(RuntimeError):
        plan_run(
            audit,
            load_settings(project_id="p1"),
            Policy(),
            inventory(),
            run_id="r-fail",
            dry_run=False,
            trigger="test",
            source="test",
        )
    meta = audit.run("r-fail")
    assert meta["status"] == "aborted" and "listing blew up" in meta["reason"]


# --- A planner that dies mid-plan -------------------------------------------------------------

_KILLED_PLANNER = """
import sys, time
from scheduler.context import Context
from scheduler.planner import plan_run
from scheduler.policy import Policy
from scheduler.service import _start_claimed
from worker.models import TaskInfo
from worker.settings import load_settings

ctx = Context(load_settings(redis_url=sys.argv[1], project_id="p1"))

def inventory():
    for n in range(300):
        yield TaskInfo("p1", "s1", f"t{n:05d}", status="SUCCESS")
    print("listing stalls", flush=True)
    time.sleep(3600)  # killed here, as a control worker is killed mid-listing

def start(run_id):
    plan_run(ctx.audit, ctx.settings, Policy(), inventory(), run_id=run_id, dry_run=False,
             trigger="message", source="test", extra_meta={"idempotency_key": "nightly-x"})

_start_claimed(ctx, "nightly-x", start)
"""


def _backdate(redis_client: redis.Redis, run_id: str, seconds: float) -> None:
    """As if ``seconds`` had passed since the planner's last sign of life."""
    key = f"sfs:run:{{{run_id}}}"
    for field in ("plan_beat", "created_at"):
        value = redis_client.hget(key, field)
        assert value is not None, field
        redis_client.hset(key, field, str(float(value) - seconds))


def test_a_run_whose_planner_was_killed_is_aborted_and_its_trigger_freed(
    redis_url: str, redis_client: redis.Redis
) -> None:
    import signal
    import subprocess
    import sys

    from scheduler.context import Context
    from scheduler.dispatch import reconcile_all
    from scheduler.service import _start_claimed
    from worker.jobnames import DELETE_QUEUE
    from worker.settings import load_settings

    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_PLANNER, redis_url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "listing stalls"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    run_id = redis_client.get("sfs:trigger:nightly-x")
    assert run_id is not None
    ctx = Context(load_settings(redis_url=redis_url, planning_stale_s=600))
    assert ctx.audit.status(run_id).value == "planning"
    assert ctx.audit.run(run_id).get("plan_beat"), "the planner showed it was alive"

    reconcile_all(ctx.app, ctx.audit, ctx.settings)
    assert ctx.audit.status(run_id).value == "planning", "a recent heartbeat: the planner may be alive"

    _backdate(redis_client, run_id, 601)
    reconcile_all(ctx.app, ctx.audit, ctx.settings)
    meta = ctx.audit.run(run_id)
    assert meta["status"] == "aborted"
    assert meta["reason"] == "planning stopped: no progress for 600 s (the planner was killed or lost)"
    assert [e["run_id"] for e in ctx.audit.events(kind="run_abandoned")] == [run_id]
    assert redis_client.get("sfs:trigger:nightly-x") is None, "the slot may be run again"
    assert redis_client.llen(DELETE_QUEUE) == 0, "nothing was sent for the abandoned run"

    again = _start_claimed(ctx, "nightly-x", lambda new: {"run_id": new})
    assert again["run_id"] not in (None, run_id)


def test_a_trigger_sent_again_takes_over_from_a_dead_planner(redis_url: str, redis_client: redis.Redis) -> None:
    from scheduler.context import Context
    from scheduler.service import _start_claimed
    from worker.settings import load_settings

    ctx = Context(load_settings(redis_url=redis_url, planning_stale_s=600))

    def stuck(run_id: str | None) -> dict[str, str | None]:
        assert run_id is not None
        ctx.audit.create_run(run_id, {"trigger": "message", "idempotency_key": "key-9"})
        ctx.audit.planning_beat(run_id)
        return {"run_id": run_id}  # and its planner is never heard of again

    first = _start_claimed(ctx, "key-9", stuck)["run_id"]
    assert first is not None
    assert _start_claimed(ctx, "key-9", stuck) == {"accepted": True, "run_id": first, "duplicate": True}
    _backdate(redis_client, first, 601)
    second = _start_claimed(ctx, "key-9", stuck)
    assert second["run_id"] != first and "duplicate" not in second
    assert ctx.audit.status(first).value == "aborted"
    assert redis_client.get("sfs:trigger:key-9") == second["run_id"]


def test_a_slow_planner_whose_run_was_abandoned_sends_nothing(redis_client: redis.Redis) -> None:
    from scheduler.planner import plan_run
    from scheduler.policy import Policy
    from worker.ledger import Audit, RunStatus
    from worker.models import TaskInfo
    from worker.settings import load_settings

    audit = Audit(redis_client)

    def inventory() -> Iterator[TaskInfo]:
        for n in range(500):
            if n == 250:  # the reconciler gives up on this planner while it is only slow
                _backdate(redis_client, "r-slow", 601)
                assert audit.abandon_stale_planning("r-slow", 600)
            yield TaskInfo("p1", "s1", f"t{n:05d}", status="SUCCESS")

    result = plan_run(
        audit,
        load_settings(project_id="p1"),
        Policy(),
        inventory(),
        run_id="r-slow",
        dry_run=False,
        trigger="test",
        source="test",
    )
    assert result.status is RunStatus.ABORTED
    meta = audit.run("r-slow")
    assert meta["status"] == "aborted" and meta["reason"].startswith("planning stopped")
