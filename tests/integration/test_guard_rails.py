"""Guard rails between a plan and its DELETEs, against a real Redis, real workers and the fake API.

* ``runs apply`` sends exactly a reviewed plan: a held run's tasks, or a dry run's, nothing added
  since, each still checked just before its DELETE; a stale plan, or one made under other
  settings or another policy file, is refused with what differs.
* The anomaly guard holds an unattended run (message trigger, nightly) whose selection is far
  above its policy's history, or nearly all of what was listed: nothing is sent (no job queued,
  no DELETE, even for a job sent by hand) until ``runs approve``.
* A held run nobody approves ends cancelled (``approval_timeout``) with every task aborted;
  ``runs cancel`` ends one the same way. ``runs show --wait`` exits 7 for a held run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from sandbox.fakeapi.server import FakeApi
from scheduler.context import Context
from scheduler.dispatch import reconcile_all
from scheduler.service import handle_trigger
from tests.support.cluster import Cluster, fake_api, wait_for
from worker.jobnames import DELETE_QUEUE, PURGE_BATCH
from worker.ledger import Audit, Outcome, RunStatus
from worker.settings import load_settings

pytestmark = pytest.mark.integration

fake = fake_api(shares=1, tasks_per_share=40, seed=21, deleting_seconds=0)


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path)
    yield c
    c.stop()


def unconfirmed(cluster: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a script that did not say ``--yes``."""
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args],
        env=cluster.env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def held_plan(cluster: Cluster, *args: str, **env: str) -> str:
    """Plan a purge and refuse it: the run ID of the plan left held."""
    before = {r["run_id"] for r in audit(cluster).list_runs(100)}
    result = unconfirmed(cluster, "purge", "--older-than", "0s", *args, **env)
    assert result.returncode == 2, result.stderr
    (run_id,) = [r["run_id"] for r in audit(cluster).list_runs(100) if r["run_id"] not in before]
    assert audit(cluster).status(run_id) is RunStatus.HELD
    return run_id


def audit(cluster: Cluster) -> Audit:
    return Audit(cluster.redis())


def planned(cluster: Cluster, run_id: str) -> set[str]:
    return {t for batch in audit(cluster).iter_batches(run_id) for t in batch.task_ids}


def finals(cluster: Cluster, run_id: str) -> dict[str, Outcome]:
    a = audit(cluster)
    return {
        r.task_id: r.final.outcome
        for batch in a.iter_batches(run_id)
        for r in a.task_records(batch)
        if r.final is not None
    }


def deletes(fake: FakeApi) -> int:
    return sum(fake.stats()["requests_by_method_status"].get("DELETE", {}).values())


def deleted_ids(fake: FakeApi) -> set[str]:
    return {d["task_id"] for d in fake.deleted()}


def nothing_queued(cluster: Cluster) -> bool:
    return cluster.redis().llen(DELETE_QUEUE) == 0


def add_finished_tasks(fake: FakeApi, n: int) -> set[str]:
    """New finished tasks on the fake, as if created after the plan was made."""
    template = next(t for t in fake.tasks() if t.get("status") in ("SUCCESS", "FAIL"))
    records = [dict(template, task_id=uuid.uuid4().hex) for _ in range(n)]
    fake.load_tasks(records)
    return {r["task_id"] for r in records}


def test_runs_apply_sends_exactly_the_held_plan_and_nothing_added_since(cluster: Cluster, fake: FakeApi) -> None:
    run_id = held_plan(cluster)
    plan = planned(cluster, run_id)
    assert plan and deletes(fake) == 0 and nothing_queued(cluster)
    added = add_finished_tasks(fake, 5)
    assert added <= {t["task_id"] for t in fake.tasks()}

    cluster.start_worker("w1", concurrency=2)
    applied = cluster.cli("runs", "apply", run_id, "--wait", "--json")
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout.splitlines()[-1])
    assert report["run_id"] == run_id and report["outcomes"]["deleted"] == len(plan)
    assert deleted_ids(fake) == plan, "exactly the reviewed tasks"
    assert added <= {t["task_id"] for t in fake.tasks()}, "tasks that appeared after the plan are untouched"
    assert report["approved_by"] and cluster.redis().hget(f"sfs:run:{{{run_id}}}", "approved_how") == "apply"

    again = cluster.cli("runs", "apply", run_id)
    assert again.returncode == 2 and "only a held run or a finished dry run" in again.stderr


def test_runs_apply_of_a_dry_run_is_a_new_run_of_its_tasks_each_checked_again(cluster: Cluster, fake: FakeApi) -> None:
    code, dry = cluster.purge_json("--dry-run", "--older-than", "0s")
    assert code == 0 and dry["outcomes"]["would_delete"] > 2
    would = {t for t, o in finals(cluster, dry["run_id"]).items() if o is Outcome.WOULD_DELETE}
    protected = sorted(would)[0]
    assert cluster.cli("protect", "add", "--task", protected).returncode == 0
    add_finished_tasks(fake, 3)

    cluster.start_worker("w1", concurrency=2)
    applied = cluster.cli("runs", "apply", dry["run_id"], "--wait", "--json")
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout.splitlines()[-1])
    assert report["run_id"] != dry["run_id"] and report["parent_run"] == dry["run_id"]
    assert report["source"] == f"plan:{dry['run_id']}" and report["trigger"] == "apply"
    shown = cluster.cli("runs", "show", report["run_id"])
    assert f"applies the plan of dry run {dry['run_id']}" in shown.stdout, shown.stdout[-500:]
    assert deleted_ids(fake) == would - {protected}
    # The hold placed after the review is honoured: the task is left out of the applied run.
    assert protected not in planned(cluster, report["run_id"]) and report["not_selected"] == {"protected_task": 1}


def test_runs_apply_refuses_a_stale_plan_or_one_made_differently_and_sends_nothing(
    cluster: Cluster, fake: FakeApi, tmp_path: Path
) -> None:
    run_id = held_plan(cluster)
    key = f"sfs:run:{{{run_id}}}"
    r = cluster.redis()
    planned_at = r.hget(key, "planned_at")
    r.hset(key, "planned_at", str(time.time() - 25 * 3600))
    stale = cluster.cli("runs", "apply", run_id)
    assert stale.returncode == 2 and "older than SFS_CLEANUP_PLAN_MAX_AGE_S" in stale.stderr, stale.stderr
    r.hset(key, "planned_at", planned_at or "0")

    other = cluster.cli("runs", "apply", run_id, SFS_CLEANUP_OLDER_THAN="3d", SFS_CLEANUP_MAX_DELETIONS="5")
    assert other.returncode == 2
    [line] = [x for x in other.stderr.splitlines() if x.startswith("error:")]
    assert "SFS_CLEANUP_OLDER_THAN ('7d' then, '3d' now)" in line and "SFS_CLEANUP_MAX_DELETIONS" in line

    policy = tmp_path / "policy.yaml"
    policy.write_text("max_deletions: 30\n")
    with_file = held_plan(cluster, "--policy", str(policy))
    policy.write_text("max_deletions: 40\n")
    changed = cluster.cli("runs", "apply", with_file)
    assert changed.returncode == 2 and f"{policy.resolve()} changed since" in changed.stderr, changed.stderr

    cluster.start_worker("w1")
    time.sleep(1.0)
    assert deletes(fake) == 0 and nothing_queued(cluster)
    assert {audit(cluster).status(x) for x in (run_id, with_file)} == {RunStatus.HELD}


def _trigger(cluster: Cluster, name: str, **kwargs: Any) -> dict[str, Any]:
    """A message trigger handled as a control worker does (in-process, same code path)."""
    ctx = Context(load_settings(**_settings(cluster)))
    return handle_trigger(ctx, name, f"m-{time.monotonic_ns()}", (), kwargs)


def _settings(cluster: Cluster) -> dict[str, Any]:
    env = cluster.env()
    return {k[len("SFS_CLEANUP_") :].lower(): v for k, v in env.items() if k.startswith("SFS_CLEANUP_")}


def _history(cluster: Cluster, policy_fp: str, sizes: list[int]) -> None:
    """Finished real runs of the same policy in the ledger (as the reconciler would have left them)."""
    a = audit(cluster)
    for n, size in enumerate(sizes):
        run_id = f"history-{n}"
        a.create_run(run_id, {"trigger": "schedule", "source": "live:x", "dry_run": False, "policy_fp": policy_fp})
        a.redis.hset(a.keys.run(run_id), mapping={"status": "finished", "planned": size, "selected": size})
        a.forget_active(run_id)


def _policy_fp(cluster: Cluster) -> str:
    dry = _trigger(cluster, "sfs.start_purge", dry_run=True, policy={"older_than": "0s"})
    return audit(cluster).run(dry["run_id"])["policy_fp"]


def test_an_unattended_run_far_above_its_history_is_held_until_approved(cluster: Cluster, fake: FakeApi) -> None:
    cluster.settings.update({"SFS_CLEANUP_ANOMALY_MIN_TASKS": "10", "SFS_CLEANUP_ANOMALY_MAX_FRACTION": "1"})
    _history(cluster, _policy_fp(cluster), [3, 2, 3])  # median 3; this run selects ten times that
    cluster.start_worker("w1", concurrency=2)

    started = _trigger(cluster, "sfs.start_purge", policy={"older_than": "0s"})
    run_id = started["run_id"]
    meta = audit(cluster).run(run_id)
    assert meta["status"] == "held", meta
    assert "more than 3x the median 3 of this policy's last 3 runs" in meta["hold_reason"]
    assert int(meta["planned"]) >= 10 * 3

    # Nothing leaves while it is held: no job queued, none by the reconciler, none sent by hand.
    ctx = Context(load_settings(**_settings(cluster)))
    reconcile_all(ctx.app, ctx.audit, ctx.settings)
    with Celery(broker=cluster.redis_url, set_as_current=False) as app:
        app.send_task(PURGE_BATCH, kwargs={"run_id": run_id, "batch": 0}, queue=DELETE_QUEUE)
    wait_for(lambda: nothing_queued(cluster), timeout=30, what="the hand-sent job to be consumed")
    time.sleep(1.0)
    assert deletes(fake) == 0 and finals(cluster, run_id) == {}
    shown = cluster.cli("runs", "show", run_id, "--wait", "--json")
    assert shown.returncode == 7 and json.loads(shown.stdout)["status"] == "held"

    approved = cluster.cli("runs", "approve", run_id, "--wait", "--json")
    assert approved.returncode == 0, approved.stderr
    assert deleted_ids(fake) == planned(cluster, run_id)


def test_a_run_in_line_with_its_history_goes_and_dry_runs_are_never_held(cluster: Cluster, fake: FakeApi) -> None:
    cluster.settings.update({"SFS_CLEANUP_ANOMALY_MIN_TASKS": "10", "SFS_CLEANUP_ANOMALY_MAX_FRACTION": "1"})
    fp = _policy_fp(cluster)
    _history(cluster, fp, [25, 30, 20])
    dry = _trigger(cluster, "sfs.start_purge", dry_run=True, policy={"older_than": "0s"})
    assert audit(cluster).status(dry["run_id"]) is RunStatus.FINISHED
    cluster.start_worker("w1", concurrency=2)
    started = _trigger(cluster, "sfs.start_purge", policy={"older_than": "0s"})
    report = wait_for(
        lambda: (m := audit(cluster).run(started["run_id"]))["status"] in ("finished", "aborted") and m,
        timeout=60,
        what="the run to finish",
    )
    assert report["status"] == "finished" and not report.get("hold_reason")
    assert deletes(fake) == int(report["planned"]) > 10


def test_an_unattended_run_selecting_nearly_all_it_listed_is_held_but_an_explicit_list_is_not(
    cluster: Cluster, fake: FakeApi
) -> None:
    cluster.settings.update({"SFS_CLEANUP_ANOMALY_MIN_TASKS": "10", "SFS_CLEANUP_ANOMALY_MAX_FRACTION": "0.5"})
    started = _trigger(cluster, "sfs.start_purge", policy={"older_than": "0s"})
    meta = audit(cluster).run(started["run_id"])
    assert meta["status"] == "held" and "tasks listed selected (more than 50%)" in meta["hold_reason"], meta

    listed = [{"share_id": t["share_id"], "task_id": t["task_id"]} for t in fake.tasks()][:20]
    explicit = _trigger(cluster, "sfs.delete_tasks", tasks=listed)
    assert audit(cluster).status(explicit["run_id"]) is RunStatus.RUNNING
    assert deletes(fake) == 0  # no worker yet: nothing was sent for either


def test_held_runs_end_cancelled_unapproved_or_cancelled_with_every_task_aborted(
    cluster: Cluster, fake: FakeApi
) -> None:
    expiring, cancelled = held_plan(cluster), held_plan(cluster)
    r = cluster.redis()
    r.hset(f"sfs:run:{{{expiring}}}", "held_at", str(time.time() - 2 * 86400))
    ctx = Context(load_settings(**_settings(cluster)))
    reconcile_all(ctx.app, ctx.audit, ctx.settings)
    assert cluster.cli("runs", "cancel", cancelled, "--reason", "not tonight").returncode == 0

    for run_id, reason in ((expiring, "approval_timeout"), (cancelled, "cancelled by operator: not tonight")):
        meta = audit(cluster).run(run_id)
        assert meta["status"] == "cancelled" and meta["reason"] == reason, meta
        outcomes = finals(cluster, run_id)
        assert set(outcomes.values()) == {Outcome.ABORTED} and len(outcomes) == int(meta["selected"])
        assert int(meta["finals"]) == int(meta["selected"]) and run_id not in audit(cluster).active_runs()
    refused = cluster.cli("runs", "approve", expiring)
    assert refused.returncode == 2 and "not held" in refused.stderr
    assert deletes(fake) == 0 and nothing_queued(cluster)


def test_approvals_at_once_dispatch_once_and_an_approval_racing_the_expiry_is_one_or_the_other(
    cluster: Cluster, fake: FakeApi
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from scheduler.runs import release

    # Two approvals at once: one release, one dispatch (one job per batch in the queue).
    run_id = held_plan(cluster)
    batches = int(audit(cluster).run(run_id)["batches"])
    contexts = [Context(load_settings(**_settings(cluster))) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: release(c, run_id, by=f"op-{id(c)}", how="approve"), contexts))
    assert sum(1 for a in answers if not a) == 1, answers
    assert cluster.redis().llen(DELETE_QUEUE) == batches

    # An approval racing the reconciler's expiry, many times: each run ends up either running with
    # its jobs queued, or cancelled with every task aborted and no job; never both.
    for n in range(6):
        cluster.redis().delete(DELETE_QUEUE)
        racing = held_plan(cluster)
        cluster.redis().hset(f"sfs:run:{{{racing}}}", "held_at", str(time.time() - 2 * 86400))
        ctx = contexts[n % 4]
        with ThreadPoolExecutor(2) as pool:
            approving = pool.submit(release, ctx, racing, by="op", how="approve")
            pool.submit(reconcile_all, ctx.app, ctx.audit, ctx.settings).result()
            approved = not approving.result()
        meta = audit(cluster).run(racing)
        queued = cluster.redis().llen(DELETE_QUEUE)
        if approved:
            assert meta["status"] == "running" and queued == int(meta["batches"]), (meta, queued)
        else:
            assert meta["status"] == "cancelled" and meta["reason"] == "approval_timeout" and queued == 0
            assert set(finals(cluster, racing).values()) == {Outcome.ABORTED}
    assert deletes(fake) == 0  # no worker ran: nothing could be sent, whatever the order
