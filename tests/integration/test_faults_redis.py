"""Redis restarted mid-run (AOF on): workers and the following scheduler reconnect, nothing is lost.

A private ``redis-server --appendonly yes`` per test, stopped (SIGTERM: it writes its AOF) and
started again on the same port and data directory while a run of several thousand deletions is
in flight. Figures are printed with ``[figure]`` (``pytest -s``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.fakeapi.config import FakeConfig
from scheduler.fakeapi.server import FakeApi
from tests.support.cluster import Cluster
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
from worker.redis_server import RedisServer

pytestmark = pytest.mark.integration

RUN_SIZE = 4000
DOWN_S = 3.0  # how long Redis stays down: longer than redis-py's own few quick retries


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.cleanup()


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    config = FakeConfig(shares=4, tasks_per_share=1500, seed=41, latency_ms=25, deleting_seconds=0)
    with FakeApi(config).start() as api:
        yield api


@pytest.fixture
def cluster(aof_redis: RedisServer, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=aof_redis.url, fake=fake, tmp=tmp_path, settings=dict(FAST))
    yield c
    c.stop()


@pytest.mark.slow
def test_redis_restart_mid_run_workers_and_scheduler_reconnect(
    cluster: Cluster, fake: FakeApi, aof_redis: RedisServer
) -> None:
    view = RunView(aof_redis.url)
    cluster.start_worker("w1", concurrency=2)
    with running(background_cli(cluster, "purge", "purge", "--max-deletions", str(RUN_SIZE), "--wait", "--json")) as bg:
        run_id = view.wait_run()
        view.wait_finals(run_id, RUN_SIZE * 3 // 10, timeout=120)
        before = view.finals(run_id)
        stopped_at = time.monotonic()
        aof_redis.stop()  # SIGTERM: Redis writes its AOF and exits
        time.sleep(DOWN_S)
        aof_redis.start()
        restarted = time.monotonic() - stopped_at
        after_restart = view.finals_safe(run_id)
        assert after_restart is not None and after_restart >= before  # the AOF kept the ledger
        view.wait_finals(run_id, after_restart + 1, timeout=90)
        resumed = time.monotonic() - stopped_at
        code = bg.wait(180)
        finished = time.monotonic() - stopped_at
        report = bg.report()
        stderr = bg.err.read_text(errors="replace")

    figure("outcomes at the stop / read back after the restart", f"{before} / {after_restart} of {RUN_SIZE}")
    figure("Redis down (s)", round(restarted, 1))
    figure("stop -> first new outcome after the restart (s)", round(resumed, 1))
    figure("stop -> run finished (s)", round(finished, 1))
    assert code == 0, f"{report}\n{stderr[-3000:]}"
    assert report["status"] == "finished", report
    rows = export_rows(cluster, run_id)
    counted = assert_one_outcome_per_task(report, rows)
    assert report["selected"] == RUN_SIZE
    assert set(counted) <= {"deleted", "already_gone"}, counted
    dups = explain_duplicates(fake, view, [run_id])
    stats = fake.stats()
    dup_tasks = {d["task_id"] for d in stats["duplicates"]}
    figure("duplicate DELETEs", f"{dups.total} ({len(dup_tasks)} tasks)")
    figure("  explained: outcome already_gone", dups.already_gone)
    figure("  explained: deleted recorded after the duplicate", dups.recorded_later)
    figure("outcomes", dict(counted))
    # Nothing lost from the audit: every accepted DELETE is a `deleted` outcome, except those
    # whose outcome had not been written when Redis went away (their retry found them gone).
    assert counted["deleted"] + counted["already_gone"] == stats["deletes_accepted"] == RUN_SIZE
    assert counted["already_gone"] <= len(dup_tasks)
    view.close()
