"""The API goes down mid-run: the fleet backs off, resumes, and fails only what outlived its budget.

Real Redis, real workers, the fake API answering 503 ``APIGW.0201`` during the outage. Figures
are printed with ``[figure]`` (``pytest -s``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.fakeapi.server import FakeApi
from tests.support import fault_runs
from tests.support.cluster import Cluster, fake_api
from tests.support.faults import (
    FAST,
    RunView,
    assert_one_outcome_per_task,
    background_cli,
    explain_duplicates,
    export_rows,
    figure,
    running,
)

pytestmark = pytest.mark.integration

OUTAGE_S = 60.0


def deletes(fake: FakeApi) -> dict[str, int]:
    return dict(fake.stats()["requests_by_method_status"].get("DELETE", {}))


fake = fake_api(shares=4, tasks_per_share=700, seed=51, latency_ms=20, deleting_seconds=0)
cluster = fault_runs.cluster
view = fault_runs.view


@pytest.mark.slow
def test_a_60s_outage_inside_the_retry_budget_fails_nothing(fake: FakeApi, view: RunView, cluster: Cluster) -> None:
    size = 2000
    cluster.settings.update(
        # The run lasts long enough for an outage in the middle: 100 requests/s for the fleet.
        SFS_CLEANUP_RATE_LIMIT="100",
        SFS_CLEANUP_RATE_BURST="10",
        # The default retry budget: 8 retries, backoff from 1 s doubling to 60 s (at least
        # about 92 s of backoff in all, with equal jitter), and the default 60 s longest wait
        # for a limiter slot. A job may wait out the outage, so its time limit is long.
        SFS_CLEANUP_MAX_RETRIES="8",
        SFS_CLEANUP_RETRY_BACKOFF_BASE_S="1",
        SFS_CLEANUP_RETRY_BACKOFF_MAX_S="60",
        SFS_CLEANUP_RATE_WAIT_MAX_S="60",
        SFS_CLEANUP_JOB_TIME_LIMIT_S="300",
        SFS_CLEANUP_VISIBILITY_TIMEOUT_S="400",
    )
    try:
        cluster.start_worker("w1", concurrency=2)
        cluster.start_worker("w2", concurrency=2)
        with running(background_cli(cluster, "purge", "purge", "--max-deletions", str(size), "--wait", "--json")) as bg:
            run_id = view.wait_run()
            view.wait_finals(run_id, size // 5, timeout=120)
            before = sum(deletes(fake).values())
            rate_before = view.audit.rate_profile(run_id)["average_rps"]
            fake.configure(outage=True, outage_status=503)
            start = time.monotonic()
            finals_at_start = view.finals(run_id)
            time.sleep(OUTAGE_S)
            fake.configure(outage=False)
            ended = time.monotonic()
            during = sum(deletes(fake).values()) - before
            finals_at_end = view.finals(run_id)
            view.wait_finals(run_id, finals_at_end + 1, timeout=120)
            resumed = time.monotonic() - ended
            code = bg.wait(240)
            finished = time.monotonic() - ended
            report = bg.report()
    finally:
        cluster.stop()

    stats = fake.stats()
    figure("request rate before the outage (/s)", rate_before)
    figure("outage (s)", round(ended - start, 1))
    figure("DELETEs sent during the 60 s outage", during)
    figure("  answered 503 in all", stats["injected_faults"].get("outage", 0))
    figure("outcomes written during the outage", finals_at_end - finals_at_start)
    figure("outage end -> first new outcome (s)", round(resumed, 1))
    figure("outage end -> run finished (s)", round(finished, 1))
    figure("retries recorded", report["retries"])
    assert code == 0, report
    assert report["status"] == "finished"
    rows = export_rows(cluster, run_id)
    counted = assert_one_outcome_per_task(report, rows)
    # Nothing that would have succeeded after the outage ended as failed.
    assert counted == {"deleted": size}, counted
    assert stats["deletes_accepted"] == size and stats["duplicate_deletes"] == 0
    # The fleet backed off: at the rate before the outage it would have sent ~6,000 DELETEs.
    assert during < 300, during
    retried = [r for r in rows if r["attempts"] > 1]
    assert retried and all(len(r["request_ids"]) == r["attempts"] for r in retried)


@pytest.mark.slow
def test_an_outage_longer_than_the_budget_fails_the_rest_and_replay_deletes_them(
    fake: FakeApi, view: RunView, cluster: Cluster
) -> None:
    size = 600
    cluster.settings.update(
        SFS_CLEANUP_RATE_LIMIT="100",
        SFS_CLEANUP_RATE_BURST="10",
        # A small budget: 2 retries with short backoff, and a task may wait for a limiter slot
        # (the circuit holds the fleet while the API is down) 1 s at a time, twice. Wide jobs,
        # so the waiting tasks use up their budget side by side.
        SFS_CLEANUP_MAX_RETRIES="2",
        SFS_CLEANUP_RETRY_BACKOFF_BASE_S="0.2",
        SFS_CLEANUP_RETRY_BACKOFF_MAX_S="0.5",
        SFS_CLEANUP_RATE_WAIT_MAX_S="1",
        SFS_CLEANUP_MAX_THROTTLED_RETRIES="1",
        SFS_CLEANUP_BATCH_CONCURRENCY="32",
        SFS_CLEANUP_FAILURE_THRESHOLD_RATIO="1",  # this test is about failed tasks, not aborting
    )
    try:
        cluster.start_worker("w1", concurrency=2)
        with running(background_cli(cluster, "purge", "purge", "--max-deletions", str(size), "--wait", "--json")) as bg:
            run_id = view.wait_run()
            view.wait_finals(run_id, size // 4, timeout=120)
            fake.configure(outage=True, outage_status=503)
            start = time.monotonic()
            code = bg.wait(240)
            failed_all_after = time.monotonic() - start
            report = bg.report()
        rows = export_rows(cluster, run_id)
        stats = fake.stats()
        counted = assert_one_outcome_per_task(report, rows)
        failed = [r for r in rows if r["outcome"] == "failed"]
        sent = [r for r in failed if r["attempts"] > 0]
        figure("outage start -> every remaining task settled (s)", round(failed_all_after, 1))
        figure("outcomes", dict(counted))
        figure("failed tasks sent / held by the circuit, never sent", f"{len(sent)} / {len(failed) - len(sent)}")
        figure("reasons of failed tasks", dict(_count(r["reason"] for r in failed)))
        assert report["status"] == "finished" and code == 3, report  # 3: finished with failed tasks
        assert failed and counted["deleted"] + len(failed) == size
        # Each failed task that was sent carries every request ID, the last one's status and code.
        for r in sent:
            assert len(r["request_ids"]) == r["attempts"], r
            assert r["last_http_status"] == 503 and r["error_code"] == "APIGW.0201", r
        # Every 503 the fake sent is an attempt in the audit (none unaccounted for).
        answered_503 = stats["requests_by_method_status"]["DELETE"].get("503", 0)
        assert answered_503 == sum(r["attempts"] for r in sent)

        # The API is back: replay the failed tasks as a new run linked to the old one, with the
        # usual budget (the shrunken one above would fail them again while the fleet's circuit
        # finishes the cool-down the outage left it in, up to a minute).
        fake.configure(outage=False)
        cluster.stop()
        for name in ("RATE_WAIT_MAX_S", "MAX_THROTTLED_RETRIES", "MAX_RETRIES"):
            cluster.settings.pop(f"SFS_CLEANUP_{name}", None)
        cluster.settings.update(FAST)
        cluster.start_worker("w2", concurrency=2)
        replay = cluster.cli("runs", "replay", run_id, "--wait", "--json", timeout=240)
        replayed: dict[str, Any] = json.loads(replay.stdout.strip().splitlines()[-1])
    finally:
        cluster.stop()
    figure("replay", {k: replayed[k] for k in ("run_id", "parent_run", "status", "selected", "elapsed_s")})
    assert replay.returncode == 0, replay.stderr
    assert replayed["parent_run"] == run_id
    assert replayed["status"] == "finished"
    assert replayed["selected"] == len(failed)
    assert replayed["outcomes"]["deleted"] == len(failed)
    stats = fake.stats()
    assert stats["deletes_accepted"] == size  # every selected task deleted once, across both runs
    dups = explain_duplicates(fake, view, [run_id, replayed["run_id"]])
    assert dups.total == 0


def _count(values: Iterator[str] | Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# --- blast radius: the failure threshold and cancel ------------------------------------------------
def test_the_fakes_permanent_error_ratio_refuses_the_same_tasks_every_time(fake: FakeApi) -> None:
    import httpx

    fake.configure(permanent_error_ratio=0.5)
    share = fake.share_ids[0]
    tasks = [t["task_id"] for t in fake.tasks(share) if t["status"] == "SUCCESS"][:200]
    url = f"{fake.url}/v1/{fake.project_id}/sfs-turbo/{share}/hpc-cache/task"
    headers = {"X-Auth-Token": fake.token}
    with httpx.Client(headers=headers) as client:
        first = {t: client.delete(f"{url}/{t}") for t in tasks}
        refused = {t for t, r in first.items() if r.status_code == 400}
        again = {t: client.delete(f"{url}/{t}").status_code for t in refused}
    assert 60 < len(refused) < 140  # about half, chosen by a stable hash of the task ID
    assert all(first[t].json() == {"errCode": "SFS.TURBO.0001", "errMsg": "parameter error"} for t in refused)
    assert set(again.values()) == {400}  # permanent: the same answer on every try
    assert all(first[t].status_code == 202 for t in set(tasks) - refused)
    assert fake.stats()["injected_faults"]["permanent_error_ratio"] == 2 * len(refused)


@pytest.mark.slow
def test_failure_threshold_stops_the_run_and_the_rest_end_aborted(
    fake: FakeApi, view: RunView, cluster: Cluster
) -> None:
    size = 2000
    fake.configure(permanent_error_ratio=0.8)  # 4 in 5 deletes refused for good (400 SFS.TURBO.0001)
    cluster.settings.update(
        SFS_CLEANUP_RATE_LIMIT="200",
        SFS_CLEANUP_FAILURE_THRESHOLD_RATIO="0.5",
        SFS_CLEANUP_FAILURE_THRESHOLD_MIN_ATTEMPTS="50",
    )
    try:
        cluster.start_worker("w1", concurrency=2)
        code, report = cluster.purge_json("--max-deletions", str(size), "--wait", timeout=240)
        run_id = report["run_id"]
        rows = export_rows(cluster, run_id)
    finally:
        cluster.stop()
    stats = fake.stats()
    counted = assert_one_outcome_per_task(report, rows)
    sent = sum(deletes(fake).values())
    figure("threshold", "50% failed after 50 attempted")
    figure("outcomes", dict(counted))
    figure("DELETEs sent before the run stopped itself", f"{sent} of {size} tasks")
    figure("reason", report["reason"])
    assert code == 4 and report["status"] == "aborted", report
    assert report["reason"].startswith("failure threshold reached:"), report["reason"]
    assert counted["failed"] >= 26 and counted["aborted"] > size // 2, counted
    assert set(counted) <= {"deleted", "failed", "aborted"}
    # Aborted tasks were never sent; every DELETE that was sent is an attempt in the audit.
    aborted = [r for r in rows if r["outcome"] == "aborted"]
    assert all(r["attempts"] == 0 and r["reason"] == report["reason"] for r in aborted)
    assert sent == sum(r["attempts"] for r in rows) == report["attempts"]
    assert counted["deleted"] == stats["deletes_accepted"]
    failed = [r for r in rows if r["outcome"] == "failed"]
    assert all(r["last_http_status"] == 400 and r["error_code"] == "SFS.TURBO.0001" for r in failed)


@pytest.mark.slow
def test_cancel_stops_a_run_on_demand(fake: FakeApi, view: RunView, cluster: Cluster) -> None:
    size = 2000
    cluster.settings.update(SFS_CLEANUP_RATE_LIMIT="100")
    try:
        cluster.start_worker("w1", concurrency=2)
        with running(background_cli(cluster, "purge", "purge", "--max-deletions", str(size), "--wait", "--json")) as bg:
            run_id = view.wait_run()
            view.wait_finals(run_id, 300, timeout=120)
            cancelled = cluster.cli("runs", "cancel", run_id, "--reason", "fault test", check=True)
            at_cancel = sum(deletes(fake).values())
            cancel_at = time.monotonic()
            view.wait_over(run_id, timeout=60)
            stopped_after = time.monotonic() - cancel_at
            code = bg.wait(60)
            report = bg.report()
        shown = cluster.cli("runs", "show", run_id, "--json", check=True)
        again = cluster.cli("runs", "cancel", run_id, check=True)
        rows = export_rows(cluster, run_id)
    finally:
        cluster.stop()
    after = sum(deletes(fake).values()) - at_cancel
    counted = assert_one_outcome_per_task(report, rows)
    figure("cancel -> run over (s)", round(stopped_after, 1))
    figure("DELETEs sent after the cancel returned", after)
    figure("outcomes", dict(counted))
    assert "stopping" in cancelled.stdout
    assert code == 4, report  # purge --wait: 4 = aborted or cancelled
    assert report["status"] == "cancelled" and report["reason"] == "cancelled by operator: fault test"
    assert json.loads(shown.stdout)["status"] == "cancelled"
    assert "is not running" in again.stdout
    assert set(counted) == {"deleted", "aborted"} and counted["aborted"] > size // 2, counted
    assert all(r["attempts"] == 0 for r in rows if r["outcome"] == "aborted")
    assert counted["deleted"] == fake.stats()["deletes_accepted"]
    assert after < 100  # only what was in flight
