"""A brownout is not an outage: when many but not all DELETEs fail, the run keeps deleting.

Real Redis, real workers, the fake API failing part of the DELETEs (500 ``SFS.TURBO.0005``).
The fleet must keep at least a quarter of its rate and fail no task: the circuit is for
outages (see the "Circuit" part of :mod:`worker.ratelimit`). Before the sampled half-open, one
failed trial re-opened the circuit with a doubled cool-down and the run all but stopped (24
DELETEs in 100 s at 10/s with every first attempt failing). Figures are printed with
``[figure]`` (``pytest -s``).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from sandbox.fakeapi.faults import attempt_fails
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
from worker.settings import Settings

pytestmark = pytest.mark.integration

fake = fake_api(shares=2, tasks_per_share=300, seed=61, latency_ms=5, deleting_seconds=0)
cluster = fault_runs.cluster
view = fault_runs.view

# Each run must finish well within this; on the landed single-trial circuit neither did.
RUN_TIMEOUT_S = 75.0


def _purge(cluster: Cluster, view: RunView, size: int) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    with running(background_cli(cluster, "purge", "purge", "--max-deletions", str(size), "--wait", "--json")) as bg:
        run_id = view.wait_run()
        try:
            code = bg.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            profile = view.audit.rate_profile(run_id)
            pytest.fail(
                f"the run did not finish within {RUN_TIMEOUT_S} s: {view.finals(run_id)} of {size} tasks settled, "
                f"{profile['requests']} requests at {profile['average_rps']}/s"
            )
        report = bg.report()
    assert code == 0, report
    assert report["status"] == "finished", report
    return report, export_rows(cluster, run_id), run_id


def _rate(view: RunView, run_id: str, limit: float) -> float:
    profile = view.audit.rate_profile(run_id)
    figure("requests / seconds of the run", f"{profile['requests']} / {profile['seconds']}")
    figure("request rate achieved (/s)", f"{profile['average_rps']} of {limit}")
    figure("per second", [count for _, count in profile["per_second"]])
    return float(profile["average_rps"])


def _circuit(cluster: Cluster) -> dict[str, str]:
    client = cluster.redis()
    try:
        for key in client.scan_iter("sfs:rl:*"):
            return {k: v for k, v in client.hgetall(key).items() if k in ("cs", "cn", "ck")}
    finally:
        client.close()
    return {}


def test_every_first_attempt_failing_keeps_a_quarter_of_the_rate(
    fake: FakeApi, view: RunView, cluster: Cluster
) -> None:
    size, limit = 150, 10.0
    fake.configure(fail_first_k=1, fail_first_ratio=1.0)  # each task's first DELETE answers 500
    cluster.settings.update(SFS_CLEANUP_RATE_LIMIT=str(limit), SFS_CLEANUP_RATE_BURST="2")
    report, rows, run_id = _purge(cluster, view, size)
    stats = fake.stats()
    figure("circuit (state, openings, streak)", _circuit(cluster))
    figure("first attempts answered 500", stats["injected_faults"].get("fail_first", 0))
    counted = assert_one_outcome_per_task(report, rows)
    assert counted == {"deleted": size}, counted
    assert stats["deletes_accepted"] == size and stats["duplicate_deletes"] == 0
    assert all(r["attempts"] == 2 for r in rows), [r for r in rows if r["attempts"] != 2][:3]
    assert _rate(view, run_id, limit) >= limit / 4


def test_half_of_deletes_failing_at_random_fails_no_task(fake: FakeApi, view: RunView, cluster: Cluster) -> None:
    size, limit, seed = 300, 30.0, 1
    max_retries = int(Settings.model_fields["max_retries"].default)
    # Every second DELETE answers 500, chosen per task and attempt by a seeded hash: a fleet-wide
    # 50 % brownout whose dice do not depend on arrival order. With the default retries a task
    # fails only if its first max_retries + 1 attempts all do (1 in 2^(max_retries + 1)); the
    # seed is one where no task of this inventory does, so any failed task is the fleet's doing.
    fake.configure(error_ratio=0.5, error_per_attempt=True, fault_seed=seed)
    doomed = [
        t["task_id"]
        for share in fake.share_ids
        for t in fake.tasks(share)
        if all(attempt_fails(seed, t["task_id"], n, 0.5) for n in range(1, max_retries + 2))
    ]
    assert doomed == []
    cluster.settings.update(SFS_CLEANUP_RATE_LIMIT=str(limit), SFS_CLEANUP_RATE_BURST="5")
    report, rows, run_id = _purge(cluster, view, size)
    stats = fake.stats()
    errors = stats["injected_faults"].get("error_ratio", 0)
    figure("circuit (state, openings, streak)", _circuit(cluster))
    figure("DELETEs answered 500", f"{errors} of {sum(r['attempts'] for r in rows)}")
    counted = assert_one_outcome_per_task(report, rows)
    assert counted == {"deleted": size}, counted
    assert stats["deletes_accepted"] == size and stats["duplicate_deletes"] == 0
    assert errors > size / 2  # the brownout was real: about one 500 per task
    assert _rate(view, run_id, limit) >= limit / 4
