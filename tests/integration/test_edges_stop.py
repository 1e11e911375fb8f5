"""Stop means stop.

After ``sfs-cleanup runs cancel RUN_ID`` returns, or the failure threshold trips, no further
DELETE of that run leaves the fleet, apart from requests already on the wire. The hard case is a
slow fleet: at 5 requests/s with 64 deletion threads, each thread has reserved a limiter slot
up to ~13 s ahead and sleeps until it comes. Those sleepers must not wake up and delete.

Real Redis, two real Celery workers (``-c 2``, 16 threads per job), the fake API; the DELETEs are
counted where they arrive (the fake's own arrival times, ``GET /_fake/deleted`` and its stats).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from sandbox.fakeapi.server import FakeApi
from tests.support import fault_runs
from tests.support.cluster import Cluster, fake_api
from tests.support.faults import (
    RunView,
    assert_one_outcome_per_task,
    background_cli,
    export_rows,
    figure,
    running,
)

pytestmark = pytest.mark.integration

RUN_SIZE = 300
# Requests that were on the wire when the stop came may still arrive: allow them this long.
ON_THE_WIRE_S = 1.0

# 4 shares x 400 tasks: plenty eligible for a run of 300.
fake = fake_api(shares=4, tasks_per_share=400, seed=61, latency_ms=20, deleting_seconds=0)
cluster = fault_runs.cluster
view = fault_runs.view

SLOW_FLEET = {
    # 5 DELETEs/s for the whole fleet; a thread may wait up to 120 s for its slot, so 64 threads
    # (2 workers x 2 jobs x 16) reserve slots far ahead and sleep until then.
    "SFS_CLEANUP_RATE_LIMIT": "5",
    "SFS_CLEANUP_RATE_BURST": "1",
    "SFS_CLEANUP_RATE_WAIT_MAX_S": "120",
    "SFS_CLEANUP_JOB_TIME_LIMIT_S": "300",
    "SFS_CLEANUP_VISIBILITY_TIMEOUT_S": "400",
    "SFS_CLEANUP_BATCH_SIZE": "50",
    "SFS_CLEANUP_BATCH_CONCURRENCY": "16",
}


def delete_requests(fake: FakeApi) -> int:
    """Every DELETE the fake received, whatever it answered."""
    return sum(fake.stats()["requests_by_method_status"].get("DELETE", {}).values())


class StatusWatch:
    """Polls the run's status every 10 ms; remembers when it first left ``running``.

    A CLI run is frozen ``held`` until consent (``--yes``) releases it, so ``held`` seen before
    ``running`` is the run not started yet, not a stop."""

    def __init__(self, view: RunView, run_id: str) -> None:
        self.view, self.run_id = view, run_id
        self.left_running_at: float | None = None
        self.first_status: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        seen_running = False
        while not self._stop.is_set():
            status = self.view.status(self.run_id)
            seen_running = seen_running or status == "running"
            if status not in ("", "planning", "running") and (seen_running or status != "held"):
                self.left_running_at = time.time()
                self.first_status = status
                return
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def check_nothing_sent_after(
    cluster: Cluster, fake: FakeApi, view: RunView, report: dict[str, Any], stopped_at: float, label: str
) -> None:
    """No DELETE arrived later than ``stopped_at + ON_THE_WIRE_S``; the ledger adds up; every task
    the fake did not delete ended ``aborted`` (or, before the stop, ``failed``)."""
    run_id = str(report["run_id"])
    deleted = fake.deleted()
    late_accepted = [d for d in deleted if (d["arrived"] or d["at"]) > stopped_at + ON_THE_WIRE_S]
    last_request = fake.stats()["last_request_at"] or 0.0
    figure(f"[{label}] DELETEs accepted in all", len(deleted))
    figure(f"[{label}] DELETEs accepted > {ON_THE_WIRE_S} s after the stop", len(late_accepted))
    figure(f"[{label}] last API request arrived, s after the stop", round(last_request - stopped_at, 2))
    figure(f"[{label}] outcomes", report["outcomes"])

    rows = export_rows(cluster, run_id)
    counted = assert_one_outcome_per_task(report, rows)
    assert report["selected"] == RUN_SIZE == sum(report["outcomes"].values()), report
    assert not late_accepted, (
        f"{len(late_accepted)} DELETEs arrived more than {ON_THE_WIRE_S} s after the run was stopped "
        f"(the last {last_request - stopped_at:.1f} s after it)"
    )
    assert last_request <= stopped_at + ON_THE_WIRE_S, (
        f"an API request arrived {last_request - stopped_at:.1f} s after the stop"
    )
    gone = {d["task_id"] for d in deleted}
    by_task = {r["task_id"]: r["outcome"] for r in rows}
    assert {t for t, o in by_task.items() if o == "deleted"} == gone
    assert set(counted) <= {"deleted", "aborted", "failed"}, counted
    assert counted["aborted"] > 0, counted  # the stop came with most of the run still to do
    assert fake.stats()["duplicate_deletes"] == 0


@pytest.mark.slow
def test_after_cancel_returns_no_delete_leaves_the_fleet(cluster: Cluster, fake: FakeApi, view: RunView) -> None:
    cluster.settings.update(SLOW_FLEET)
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    with running(background_cli(cluster, "purge", "purge", "--max-deletions", str(RUN_SIZE), "--wait", "--json")) as bg:
        run_id = view.wait_run()
        view.wait_finals(run_id, 10, timeout=60)  # ~3 s of deleting: every thread holds a far slot
        before = delete_requests(fake)
        cancel = cluster.cli("runs", "cancel", run_id, "--reason", "edge test", check=True)
        cancelled_at = time.time()
        assert "stopping" in cancel.stdout, cancel.stdout
        code = bg.wait(120)
        report = bg.report()
    after = delete_requests(fake)
    figure("[cancel] DELETEs sent before the cancel / in all", f"{before} / {after}")
    assert code == 4, report  # aborted or cancelled
    assert report["status"] == "cancelled", report
    check_nothing_sent_after(cluster, fake, view, report, cancelled_at, "cancel")
    assert all(r["outcome"] != "failed" for r in export_rows(cluster, run_id))


@pytest.mark.slow
def test_after_the_failure_threshold_trips_no_delete_leaves_the_fleet(
    cluster: Cluster, fake: FakeApi, view: RunView
) -> None:
    # 80 % of the tasks are refused for good (400 SFS.TURBO.0001, never retried): the run stops
    # once 10 tasks were tried.
    fake.configure(permanent_error_ratio=0.8)
    cluster.settings.update(
        SLOW_FLEET,
        SFS_CLEANUP_FAILURE_THRESHOLD_MIN_ATTEMPTS="10",
        SFS_CLEANUP_FAILURE_THRESHOLD_RATIO="0.5",
        SFS_CLEANUP_MAX_RETRIES="0",
    )
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    with running(background_cli(cluster, "purge", "purge", "--max-deletions", str(RUN_SIZE), "--wait", "--json")) as bg:
        run_id = view.wait_run()
        watch = StatusWatch(view, run_id)
        try:
            code = bg.wait(120)
        finally:
            watch.close()
        report = bg.report()
    assert watch.left_running_at is not None and watch.first_status == "stopping", watch.first_status
    figure("[threshold] reason", report.get("reason"))
    assert code == 4, report
    assert report["status"] == "aborted", report
    assert "failure threshold" in str(report.get("reason", "")), report
    check_nothing_sent_after(cluster, fake, view, report, watch.left_running_at, "threshold")
