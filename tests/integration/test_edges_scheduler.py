"""The scheduler at its edges: the cap over mixed sources, cancel while planning, the reconciler's
reach, ``--run-id``, huge durations, CSV formulas, future nightly slots, a failed plan's trigger key.

Real Redis, the fake API, real Celery worker processes and the CLI where deletes happen.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from scheduler.context import Context
from scheduler.jobs import NIGHTLY
from scheduler.planner import plan_run
from scheduler.policy import Policy
from tests.support.cluster import Cluster, as_script, wait_for
from worker.ledger import Audit, FinalOutcome, Outcome, RunStatus
from worker.models import TaskInfo
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.integration

FAST_DELETES = {"SFS_CLEANUP_BATCH_SIZE": "10", "SFS_CLEANUP_AUDIT_FLUSH_MS": "0"}


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    with FakeApi(FakeConfig(shares=2, tasks_per_share=150, seed=11, deleting_seconds=0.0)).start() as api:
        yield api


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings=dict(FAST_DELETES))
    yield c
    c.stop()


def settings_for(cluster: Cluster, **overrides: Any) -> Settings:
    fake = cluster.fake
    values: dict[str, Any] = {
        "redis_url": cluster.redis_url,
        "api_endpoint": fake.url,
        "project_id": fake.project_id,
        "share_ids": ",".join(fake.share_ids),
        "auth_token": fake.token,
        "batch_size": 10,
    }
    return load_settings(**(values | overrides))


def eligible(fake: FakeApi) -> list[dict[str, str]]:
    return [
        t
        for share in fake.share_ids
        for t in fake.tasks(share)
        if t["status"] in ("SUCCESS", "FAIL") and t.get("end_time")
    ]


def delete_count(fake: FakeApi) -> int:
    return sum(fake.stats()["requests_by_method_status"].get("DELETE", {}).values())


# --- 3. The cap is a cap -------------------------------------------------------------------------


def test_the_cap_bounds_a_manifest_that_mixes_bare_and_full_entries(cluster: Cluster, fake: FakeApi) -> None:
    tasks = eligible(fake)
    assert len(tasks) >= 120
    lines = [{"share_id": t["share_id"], "task_id": t["task_id"]} for t in tasks[:60]]  # bare: no status, no end
    lines += [
        {"share_id": t["share_id"], "task_id": t["task_id"], "status": t["status"], "end_time": t["end_time"]}
        for t in tasks[60:120]
    ]
    manifest = cluster.tmp / "mixed.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cluster.start_worker("w1", concurrency=2)

    code, report = cluster.purge_json(
        "--manifest", str(manifest), "--max-deletions", "50", "--older-than", "0s", "--wait"
    )

    assert code == 0, report
    assert report["selected"] == 50
    plan = cluster.redis().hgetall(f"sfs:run:{{{report['run_id']}}}:plan")
    assert sum(len(v.split("|", 1)[1].split(",")) for v in plan.values()) == 50
    assert sum(report["not_selected"].values()) == 70 and report["not_selected"]["over_cap"] >= 60
    assert delete_count(fake) == len(fake.deleted()) == 50


def test_the_cap_bounds_an_explicit_list_and_a_replay(cluster: Cluster, fake: FakeApi) -> None:
    from scheduler.service import handle_trigger

    tasks = eligible(fake)[:12]
    ctx = Context(settings_for(cluster, max_deletions=5))
    answer = handle_trigger(
        ctx,
        "sfs.delete_tasks",
        "m-cap",
        (),
        {"tasks": [{"share_id": t["share_id"], "task_id": t["task_id"]} for t in tasks]},
    )
    assert answer["accepted"] and answer["selected"] == 5
    assert json.loads(ctx.audit.run(answer["run_id"])["not_selected"]) == {"over_cap": 7}

    # A run whose 12 tasks failed, replayed under a cap of 3.
    audit = ctx.audit
    plan_run(
        audit,
        settings_for(cluster),
        Policy(),
        (TaskInfo(fake.project_id, t["share_id"], t["task_id"]) for t in tasks),
        run_id="failed-run",
        dry_run=False,
        trigger="test",
        source="test",
        explicit=True,
    )
    failed = FinalOutcome(Outcome.FAILED, time.time(), msg="boom")
    for batch in audit.iter_batches("failed-run"):
        for task_id in batch.task_ids:
            audit.record(batch, task_id, final=failed)
    assert audit.status("failed-run") is RunStatus.FINISHED
    result = cluster.cli("runs", "replay", "failed-run", SFS_CLEANUP_MAX_DELETIONS="3", check=True)
    replay_id = result.stdout.strip().splitlines()[-1]
    meta = audit.run(replay_id)
    assert meta["parent_run"] == "failed-run"
    assert int(meta["selected"]) == 3
    assert json.loads(meta["not_selected"]) == {"over_cap": 9}


# --- 8. Cancel while planning ----------------------------------------------------------------------


@pytest.fixture
def slow_fake() -> Iterator[FakeApi]:
    # Every call takes 0.5 s and a page holds 10 tasks: listing 300 tasks takes about 16 s.
    with FakeApi(FakeConfig(shares=2, tasks_per_share=150, seed=12, latency_ms=500.0)).start() as api:
        yield api


@pytest.fixture
def slow_cluster(redis_url: str, slow_fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(
        redis_url=redis_url,
        fake=slow_fake,
        tmp=tmp_path,
        settings={"SFS_CLEANUP_LIST_PAGE_SIZE": "10", "SFS_CLEANUP_BATCH_SIZE": "5"},
    )
    yield c
    c.stop()


def _popen(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", *as_script(args)],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"did not return within {timeout} s:\n{out}\n{err[-3000:]}") from None
    return proc.returncode, out, err


def test_a_run_cancelled_while_planning_ends_cancelled_with_its_counters_adding_up(
    slow_cluster: Cluster, slow_fake: FakeApi
) -> None:
    r = slow_cluster.redis()
    purge = _popen(slow_cluster, "purge", "--older-than", "0s", "--wait", "--json")
    try:
        run_id = wait_for(lambda: next(iter(r.zrange("sfs:runs", 0, -1)), None), timeout=30, what="the run")
        assert r.hget(f"sfs:run:{{{run_id}}}", "status") == "planning"
        follower = _popen(slow_cluster, "runs", "show", run_id, "--wait", "--json")
        time.sleep(2.5)  # some pages listed and planned, far from all of them
        assert r.hget(f"sfs:run:{{{run_id}}}", "status") == "planning"
        slow_cluster.cli("runs", "cancel", run_id, "--reason", "mid-plan", check=True)
        code, out, err = _finish(purge, timeout=60)
        show_code, show_out, _ = _finish(follower, timeout=30)
    finally:
        purge.kill()

    assert code == 4, err[-2000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["status"] == "cancelled"
    assert report["reason"] == "cancelled by operator: mid-plan"
    outcomes = report["outcomes"]
    assert report["selected"] == sum(outcomes.values()) and report["pending"] == 0
    assert outcomes["aborted"] > 0  # planned before the cancel, never sent
    assert outcomes["aborted"] + outcomes["rejected"] == report["selected"]
    assert report["seen"] < 300  # the listing was not read to its end
    assert show_code == 4 and json.loads(show_out.strip().splitlines()[-1])["status"] == "cancelled"  # its exit code
    assert delete_count(slow_fake) == 0
    # Over: its keys have their retention, and the reconciler's index has let it go.
    assert r.ttl(f"sfs:run:{{{run_id}}}") > 0 and r.ttl(f"sfs:run:{{{run_id}}}:plan") > 0
    assert r.zscore("sfs:runs:active", run_id) is None
    rows = [json.loads(x) for x in slow_cluster.cli("audit", "export", run_id, check=True).stdout.splitlines()]
    assert {row["outcome"] for row in rows} <= {"aborted", "rejected"}
    assert len(rows) == report["selected"]


def test_a_run_cancelled_while_planning_with_nothing_planned_ends_at_freeze(redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)

    def inventory() -> Iterator[TaskInfo]:
        audit.request_stop("r-empty", RunStatus.CANCELLED, "cancelled by operator")
        yield TaskInfo("p1", "s1", "t1")

    plan = plan_run(
        audit,
        load_settings(project_id="p1"),
        Policy(),
        inventory(),
        run_id="r-empty",
        dry_run=False,
        trigger="test",
        source="test",
        explicit=True,
    )
    # The planner saw the cancel at its first check, before it planned anything.
    assert plan.status is RunStatus.CANCELLED
    assert audit.run("r-empty")["selected"] == "0"
    assert redis_client.ttl(audit.keys.run("r-empty")) > 0


# --- 8. The reconciler covers every active run ------------------------------------------------------


def test_the_reconciler_reaches_an_active_run_older_than_the_newest_fifty(cluster: Cluster, fake: FakeApi) -> None:
    from scheduler.dispatch import reconcile_all

    settings = settings_for(cluster, reconcile_after_s=60)
    ctx = Context(settings)
    audit, r = ctx.audit, cluster.redis()
    tasks = eligible(fake)[:25]
    oldest = plan_run(
        audit,
        settings,
        Policy(),
        (TaskInfo(fake.project_id, t["share_id"], t["task_id"]) for t in tasks),
        run_id="00-oldest",
        dry_run=False,
        trigger="test",
        source="test",
        explicit=True,
    )
    assert oldest.status is RunStatus.RUNNING and oldest.batches >= 3
    for n in range(59):
        newer = plan_run(
            audit, settings, Policy(), iter(()), run_id=f"run-{n:02}", dry_run=False, trigger="t", source="t"
        )
        assert newer.status is RunStatus.FINISHED
    # Its jobs were never queued (lost with a broker accident) and nothing happened for a while.
    assert r.llen("sfs.delete") == 0
    r.hset(audit.keys.touch("00-oldest"), mapping={str(b): "1" for b in range(oldest.batches)})

    done = reconcile_all(ctx.app, audit, settings)

    assert done == {"00-oldest": oldest.batches}
    assert r.llen("sfs.delete") == oldest.batches
    assert r.zrange("sfs:runs:active", 0, -1) == ["00-oldest"]


# --- 11a. purge --run-id ------------------------------------------------------------------------------


def test_purge_honours_run_id_and_refuses_a_taken_or_malformed_one(cluster: Cluster, fake: FakeApi) -> None:
    code, report = cluster.purge_json("--dry-run", "--run-id", "nightly-rerun-1")
    assert code == 0 and report["run_id"] == "nightly-rerun-1"
    assert cluster.redis().hget("sfs:run:{nightly-rerun-1}", "status") == "finished"

    again = cluster.cli("purge", "--dry-run", "--run-id", "nightly-rerun-1")
    assert again.returncode == 2
    assert (
        again.stderr.strip() == "error: --run-id 'nightly-rerun-1': a run with this ID already exists; choose another"
    )

    bad = cluster.cli("purge", "--dry-run", "--run-id", "a}b{c")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --run-id") and "Traceback" not in bad.stderr
    assert len(cluster.redis().zrange("sfs:runs", 0, -1)) == 1
    assert delete_count(fake) == 0


# --- 11b. Huge durations ------------------------------------------------------------------------------


def test_a_huge_older_than_is_bad_input_not_a_traceback(cluster: Cluster) -> None:
    for value in ("99999999999d", "1000000d"):
        result = cluster.cli("purge", "--dry-run", "--older-than", value)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and "OverflowError" not in result.stderr
        assert result.stderr.startswith("error: flags: older_than:") and "too long" in result.stderr
    result = cluster.cli("purge", "--dry-run", SFS_CLEANUP_OLDER_THAN="1000000d")
    assert result.returncode == 2 and "SFS_CLEANUP_OLDER_THAN" in result.stderr and "Traceback" not in result.stderr
    assert cluster.redis().zcard("sfs:runs") == 0


# --- 11c. CSV export and spreadsheet formulas ----------------------------------------------------------


def test_csv_export_keeps_formulas_from_error_messages_and_refused_lines_as_text(redis_client: redis.Redis) -> None:
    from scheduler.export import write_export

    audit = Audit(redis_client)
    items = [TaskInfo("p1", "s1", f"t{i}") for i in range(4)]
    plan_run(
        audit,
        load_settings(project_id="p1"),
        Policy(),
        iter(items),
        run_id="r-csv",
        dry_run=False,
        trigger="t",
        source="t",
        explicit=True,
    )
    (batch,) = audit.iter_batches("r-csv")
    for task_id, msg in zip(batch.task_ids, ['=HYPERLINK("http://x","y")', "+1+1", "@SUM(A1)", "plain"], strict=True):
        audit.record(batch, task_id, final=FinalOutcome(Outcome.FAILED, time.time(), msg=msg, code="-5"))
    audit.add_rejected("r-csv", [{"source": "m", "line": 3, "reason": "\tbad", "raw": "\r=cmd|' /C calc'!A0"}])

    buffer = io.StringIO()
    write_export(audit, "r-csv", "p1", buffer, "csv")
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    messages = sorted(row["error_message"] for row in rows)
    assert messages == sorted(['\'=HYPERLINK("http://x","y")', "'+1+1", "'@SUM(A1)", "plain", "'\r=cmd|' /C calc'!A0"])
    assert {row["error_code"] for row in rows if row["outcome"] == "failed"} == {"'-5"}
    assert [row["reason"] for row in rows if row["outcome"] == "rejected"] == ["'\tbad"]
    # Nothing else changes: IDs, counts and the JSON lines stay as they were.
    assert {row["task_id"] for row in rows} == {"t0", "t1", "t2", "t3", ""}
    lines = io.StringIO()
    write_export(audit, "r-csv", "p1", lines, "jsonl")
    assert any(json.loads(line)["error_message"] == "+1+1" for line in lines.getvalue().splitlines())


# --- 11d. A nightly trigger for a future slot ------------------------------------------------------------


def test_a_nightly_trigger_for_a_future_slot_is_refused(cluster: Cluster, fake: FakeApi) -> None:
    from scheduler.service import handle_trigger

    ctx = Context(settings_for(cluster))
    future = (datetime.now(UTC) + timedelta(days=2)).replace(hour=2, minute=0, second=0, microsecond=0)
    answer = handle_trigger(ctx, NIGHTLY, "m-future", (), {"slot": future.isoformat()})
    assert answer["accepted"] is False and "in the future" in answer["error"]
    (event,) = ctx.audit.events(kind="trigger_rejected")
    assert event["message_id"] == "m-future" and "in the future" in event["error"]
    assert ctx.audit.list_runs() == []
    assert not cluster.redis().keys("sfs:trigger:*")


# --- 11f. A failed plan gives its trigger key back --------------------------------------------------------


def test_a_nightly_run_whose_planning_failed_leaves_its_slot_to_the_catch_up(cluster: Cluster, fake: FakeApi) -> None:
    from scheduler.service import catch_up_nightly, handle_trigger

    slot = (datetime.now(UTC) - timedelta(minutes=5)).replace(second=0, microsecond=0)
    settings = settings_for(
        cluster, schedule_cron=f"{slot.minute} {slot.hour} * * *", schedule_enabled=True, auth_token="not-the-token"
    )
    ctx = Context(settings)
    with pytest.raises(Exception) as failure:
        handle_trigger(ctx, NIGHTLY, "m-night", (), {})
    (run,) = ctx.audit.list_runs()
    assert run["status"] == "aborted" and run["reason"].startswith("planning failed"), (run, failure.value)
    assert cluster.redis().get(f"sfs:trigger:nightly-{slot:%Y%m%dT%H%MZ}") is None

    sent = catch_up_nightly(ctx, datetime.now(UTC))

    assert sent == slot.isoformat().replace("+00:00", "Z")
    (message,) = [json.loads(m) for m in cluster.redis().lrange("sfs.control", 0, -1)]
    assert message["headers"]["task"] == NIGHTLY
    assert delete_count(fake) == 0
