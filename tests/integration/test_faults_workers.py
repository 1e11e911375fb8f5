"""Workers that die or are stopped mid-run: the run still finishes, with one outcome per task.

Real Redis, real Celery worker processes, the fake API in a thread. Each test prints its
figures (recovery times, counts) with ``[figure]``: run ``pytest -s`` to see them.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from sandbox.fakeapi.server import FakeApi
from tests.support import fault_runs
from tests.support.cluster import Cluster, fake_api, wait_for
from tests.support.faults import (
    FAST,
    RunView,
    background_cli,
    cli_json,
    figure,
    running,
)

pytestmark = pytest.mark.integration

RUN_SIZE = 5000


# About 6,000 eligible tasks; a 25 ms answer keeps 5,000 deletions busy for a while.
fake = fake_api(shares=4, tasks_per_share=1800, seed=31, latency_ms=25, deleting_seconds=0)
cluster = fault_runs.cluster
view = fault_runs.view


@pytest.mark.slow
def test_whole_worker_sigkill_mid_run_the_run_still_finishes(cluster: Cluster, fake: FakeApi, view: RunView) -> None:
    cluster.start_worker("w1", concurrency=2)
    # The operator's `purge --wait` plans, dispatches and follows (its loop is the reconciler).
    with running(background_cli(cluster, "purge", "purge", "--max-deletions", str(RUN_SIZE), "--wait", "--json")) as bg:
        run_id = view.wait_run()
        view.wait_finals(run_id, RUN_SIZE * 3 // 10, timeout=120)
        victim = cluster.workers[0]
        held = view.leases(run_id)
        before = view.finals(run_id)
        killed_at = time.monotonic()
        victim.kill()  # SIGKILL to the main process and its pool children at once
        assert not victim.running and not victim.children()
        figure("outcomes at the kill", f"{before} of {RUN_SIZE}; batches leased by the killed worker: {len(held)}")

        cluster.start_worker("w2", concurrency=2)
        started = time.monotonic() - killed_at
        view.wait_finals(run_id, before + 1, timeout=60)
        first_progress = time.monotonic() - killed_at

        def held_batches_done() -> bool:
            return not (set(held) & set(view.audit.open_batches(run_id)))

        wait_for(held_batches_done, 150, 0.1, "the killed worker's batches to be finished")
        held_done = time.monotonic() - killed_at
        code = bg.wait(150)
        finished = time.monotonic() - killed_at
        report = bg.report()

    figure("settings", {k.removeprefix("SFS_CLEANUP_"): v for k, v in FAST.items() if "_S" in k})
    figure("kill -> replacement worker ready (s)", round(started, 1))
    figure("kill -> first progress after the kill (s)", round(first_progress, 1))
    figure("kill -> the killed worker's batches finished (s)", round(held_done, 1))
    figure("kill -> run finished (s)", round(finished, 1))
    figure("run elapsed (s)", report["elapsed_s"])
    redispatched = [e for e in view.audit.events(kind="batches_redispatched") if e.get("run_id") == run_id]
    figure("batches re-sent by the reconciler", sum(int(e["count"]) for e in redispatched))
    assert code == 0, report
    fault_runs.assert_finished_despite_crash(cluster, fake, view, report, RUN_SIZE)
    assert redispatched  # the lost jobs came back through the reconciler, not the visibility timeout
    # Bounded: the reconciler re-sends a lost batch once the queue is empty and the batch has had
    # no lease and no progress for RECONCILE_AFTER_S, well before the visibility timeout (120 s).
    assert first_progress < 45
    assert held_done < 100


@pytest.mark.slow
def test_one_pool_child_killed_its_job_is_requeued_at_once(cluster: Cluster, fake: FakeApi, view: RunView) -> None:
    worker = cluster.start_worker("w1", concurrency=2)
    # No follower here: nothing reconciles, so the run can only finish through the requeue.
    run_id = cluster.cli("purge", "--max-deletions", "2000", check=True).stdout.strip().splitlines()[-1]
    view.wait_finals(run_id, 300, timeout=120)

    running_jobs = wait_for(lambda: len(view.leases(run_id)) >= 2 and view.leases(run_id), 30, 0.05, "busy children")
    job_ids = {holder.rsplit(":", 1)[1] for holder in running_jobs.values()}
    children = worker.children()
    assert len(children) == 2
    victim = children[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    def lost_job() -> str | None:
        m = re.search(r"WorkerLostError.*?Job: \d+", worker.log())
        return m.group(0) if m else None

    # Rejected with requeue: the lost job's message is back in the broker's queue straight away.
    back = wait_for(lambda: job_ids & view.queued_job_ids(), 30, 0.02, "the lost job back in the queue")
    in_queue = time.monotonic() - killed_at
    wait_for(lost_job, 30, 0.1, "the worker to report the lost child")
    lost_seen = time.monotonic() - killed_at

    def lost_ids() -> list[str]:
        # Celery logs "Task sfs.purge_batch[<id>] received" per delivery: a requeued job shows twice.
        ids = re.findall(r"Task sfs\.purge_batch\[([0-9a-f-]+)\] received", worker.log())
        return [i for i in set(ids) if ids.count(i) > 1]

    requeued = wait_for(lost_ids, 30, 0.1, "the lost job to be delivered again")
    requeued_after = time.monotonic() - killed_at
    view.wait_over(run_id, timeout=100)
    finished = time.monotonic() - killed_at
    report = cli_json(cluster, "runs", "show", run_id, "--json")
    figure("child kill -> lost job back in the queue (s)", round(in_queue, 2))
    figure("child kill -> worker reports WorkerLostError (s)", round(lost_seen, 1))
    figure("child kill -> lost job delivered again (s)", round(requeued_after, 1))
    figure("child kill -> run finished, no reconciler running (s)", round(finished, 1))
    figure("jobs delivered twice", requeued)
    assert set(requeued) == back
    assert worker.running and len(worker.children()) == 2  # the pool replaced its child
    # The new delivery took over its own dead child's lease instead of giving up as "busy".
    assert '"state": "busy"' not in worker.log()
    fault_runs.assert_finished_despite_crash(cluster, fake, view, report, 2000)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["main", "group"])
def test_sigterm_mid_run_hands_back_or_finishes_its_jobs(
    cluster: Cluster, fake: FakeApi, view: RunView, target: str
) -> None:
    """``main``: SIGTERM to the main process, as Docker and Kubernetes send it: a warm shutdown,
    running jobs finish. ``group``: SIGTERM to the whole process group (a terminal, systemd's
    default KillMode): the pool children die at once, their jobs are handed back (requeued) and
    the replacement finishes them."""
    fake.configure(latency_ms=60)  # jobs of ~1 s each: a SIGTERM lands inside some
    first = cluster.start_worker("w1", concurrency=2)
    assert first.proc is not None
    with running(background_cli(cluster, "purge", "purge", "--max-deletions", "3000", "--wait", "--json")) as bg:
        run_id = view.wait_run()
        view.wait_finals(run_id, 600, timeout=120)
        held = view.leases(run_id)
        before = view.finals(run_id)
        term_at = time.monotonic()
        if target == "main":
            os.kill(first.pid, signal.SIGTERM)
        else:
            first.signal(signal.SIGTERM)
        first.proc.wait(60)
        exited = time.monotonic() - term_at
        after_exit = view.finals(run_id)
        still_open = set(held) & set(view.audit.open_batches(run_id))
        cluster.start_worker("w2", concurrency=2)

        def held_batches_done() -> bool:
            return not (set(held) & set(view.audit.open_batches(run_id)))

        if still_open:
            wait_for(held_batches_done, 120, 0.1, "the stopped worker's batches to be finished")
        held_done = time.monotonic() - term_at if still_open else exited
        code = bg.wait(150)
        finished = time.monotonic() - term_at
        report = bg.report()
    log = first.log()
    figure(f"[{target}] SIGTERM -> worker exited (s)", round(exited, 1))
    figure(f"[{target}] outcomes written between SIGTERM and exit", after_exit - before)
    figure(f"[{target}] batches held at SIGTERM / still open at exit", f"{len(held)} / {len(still_open)}")
    figure(f"[{target}] SIGTERM -> those batches finished (s)", round(held_done, 1))
    figure(f"[{target}] SIGTERM -> run finished (s)", round(finished, 1))
    assert code == 0, report
    fault_runs.assert_finished_despite_crash(cluster, fake, view, report, 3000)
    if target == "main":
        assert first.proc.returncode == 0, log[-2000:]
        assert "WorkerLostError" not in log
        assert not still_open  # warm shutdown: its jobs ran to the end
        assert fake.stats()["duplicate_deletes"] == 0  # a graceful stop repeats nothing
    else:
        # The children died mid-job; their jobs came back at once, and the new deliveries waited
        # out the dead jobs' leases instead of giving up as "busy".
        assert "Worker exited prematurely: signal 15 (SIGTERM)" in log
        assert held_done < 60
