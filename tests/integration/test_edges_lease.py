"""One holder per batch.

A job that fails to renew its lease (lease key gone, a pause longer than the lease, a failover)
stops sending at once; no task ever receives DELETEs from two holders at the same time.

The pause is real: the whole first worker (main process and pool child) is frozen with SIGSTOP
for longer than the lease plus the reconciler's delay, so the ``purge --wait`` loop hands the
batch to a second worker; then the first one is thawed with SIGCONT while the second is still
deleting. Its job had slots reserved and tasks in hand: it must not send any of them.

Real Redis, two real Celery workers, the fake API. Who sent what is read from the audit (each
attempt carries its holder, ``w``, and its send time is ``t - l``) and from the fake.
"""

from __future__ import annotations

import signal
import time

import pytest

from sandbox.fakeapi.server import FakeApi
from tests.support import fault_runs
from tests.support.cluster import Cluster, fake_api, wait_for
from tests.support.faults import (
    RunView,
    assert_one_outcome_per_task,
    background_cli,
    export_rows,
    figure,
    running,
)
from worker.ledger import Attempt

pytestmark = pytest.mark.integration

RUN_SIZE = 80  # one batch of one share: 16 s at 5/s

fake = fake_api(shares=2, tasks_per_share=300, seed=71, latency_ms=20, deleting_seconds=0)
cluster = fault_runs.cluster
view = fault_runs.view


def attempts_by_holder(view: RunView, run_id: str) -> dict[str, list[tuple[str, Attempt]]]:
    """holder -> (task ID, attempt) of every attempt the audit recorded."""
    found: dict[str, list[tuple[str, Attempt]]] = {}
    for batch in view.audit.iter_batches(run_id):
        for record in view.audit.task_records(batch):
            for attempt in record.attempts:
                found.setdefault(attempt.worker, []).append((record.task_id, attempt))
    return found


def sent_at(attempt: Attempt) -> float:
    """When the request left: the attempt is stamped when its answer came."""
    return attempt.at - attempt.latency_ms / 1000


@pytest.mark.slow
def test_a_job_frozen_past_its_lease_sends_nothing_after_it_thaws(
    cluster: Cluster, fake: FakeApi, view: RunView
) -> None:
    cluster.settings.update(
        SFS_CLEANUP_RATE_LIMIT="5",
        SFS_CLEANUP_RATE_BURST="1",
        SFS_CLEANUP_RATE_WAIT_MAX_S="20",
        SFS_CLEANUP_LEASE_S="5",
        SFS_CLEANUP_RECONCILE_AFTER_S="10",
        SFS_CLEANUP_BATCH_SIZE="100",
        SFS_CLEANUP_BATCH_CONCURRENCY="16",
    )
    share = fake.share_ids[0]
    first = cluster.start_worker("w1", concurrency=1)
    args = ("purge", "--share", share, "--max-deletions", str(RUN_SIZE), "--wait", "--json")
    with running(background_cli(cluster, "purge", *args)) as bg:
        run_id = view.wait_run()
        view.wait_finals(run_id, 8, timeout=60)
        holder_1 = wait_for(lambda: view.leases(run_id).get(0), 10, 0.05, "the first job's lease")
        first.signal(signal.SIGSTOP)  # main process and pool child: a pause, a VM freeze
        stopped_at = time.time()
        try:
            done_at_stop = view.finals(run_id)
            cluster.start_worker("w2", concurrency=1)

            def second_holder() -> str | None:
                holder = view.leases(run_id).get(0)
                return holder if holder not in (None, holder_1) else None

            holder_2 = wait_for(second_holder, 60, 0.05, "the reconciler to hand the batch to another job")
            handed_over = time.time() - stopped_at
            # Let the second job get going, but thaw the first while the batch is still far from done.
            view.wait_finals(run_id, done_at_stop + 3, timeout=30)
        finally:
            first.signal(signal.SIGCONT)
        cont_at = time.time()
        remaining_at_cont = RUN_SIZE - view.finals(run_id)
        code = bg.wait(120)
        report = bg.report()

    by_holder = attempts_by_holder(view, run_id)
    mine = by_holder.get(holder_1, [])
    after_thaw = [(task, a) for task, a in mine if sent_at(a) > stopped_at + 0.5]
    second = by_holder.get(holder_2, [])
    stats = fake.stats()
    figure("frozen (s)", round(cont_at - stopped_at, 1))
    figure("SIGSTOP -> batch handed to the second job (s)", round(handed_over, 1))
    figure("tasks left when the first job was thawed", remaining_at_cont)
    figure("attempts of the first / second job", f"{len(mine)} / {len(second)}")
    figure("attempts the first job sent after it was thawed", len(after_thaw))
    figure("duplicate DELETEs at the fake", stats["duplicate_deletes"])

    assert code == 0, report
    assert report["status"] == "finished", report
    rows = export_rows(cluster, run_id)
    counted = assert_one_outcome_per_task(report, rows)
    assert remaining_at_cont > 16, "the batch was nearly done before the thaw: the test proved little"
    assert second, "the second job sent nothing: the batch was never handed over"
    # The first job had lost its lease: after the thaw it sent nothing at all.
    assert not after_thaw, (
        f"the first job sent {len(after_thaw)} requests after it was thawed, while {holder_2} held the batch: "
        f"{sorted(t for t, _ in after_thaw)[:5]}..."
    )
    # At the fake: every task deleted once; a second DELETE is allowed only for a task whose first
    # DELETE was already on the wire (or its outcome not yet written) when the first job froze.
    first_delete: dict[str, float] = {}
    for d in fake.deleted():
        first_delete.setdefault(d["task_id"], d["arrived"] or d["at"])
    assert stats["deletes_accepted"] == RUN_SIZE == len(first_delete)
    both = [d["task_id"] for d in stats["duplicates"] if first_delete.get(d["task_id"], 0) > stopped_at + 0.5]
    assert not both, f"{len(both)} tasks were sent DELETEs by both jobs after the first one froze: {both[:5]}"
    assert set(counted) <= {"deleted", "already_gone"}, counted
    assert counted["deleted"] + counted["already_gone"] == RUN_SIZE
