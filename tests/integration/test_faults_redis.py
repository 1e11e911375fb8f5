"""Redis restarted mid-run (AOF on): workers and the following scheduler reconnect, nothing is lost.

A private ``redis-server --appendonly yes`` per test, stopped (SIGTERM: it writes its AOF) and
started again on the same port and data directory while a run of several thousand deletions is
in flight. Figures are printed with ``[figure]`` (``pytest -s``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sandbox.fakeapi.server import FakeApi
from sandbox.redis_server import RedisServer
from tests.support import fault_runs
from tests.support.cluster import Cluster, fake_api
from tests.support.faults import (
    RunView,
    background_cli,
    figure,
    running,
)

pytestmark = pytest.mark.integration

RUN_SIZE = 4000
DOWN_S = 3.0  # how long Redis stays down: longer than redis-py's own few quick retries


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(aof_redis: RedisServer) -> str:
    """This module's Redis is its own, with AOF on, in place of the session's."""
    return aof_redis.url


fake = fake_api(shares=4, tasks_per_share=1500, seed=41, latency_ms=25, deleting_seconds=0)
cluster = fault_runs.cluster
view = fault_runs.view


@pytest.mark.slow
def test_redis_restart_mid_run_workers_and_scheduler_reconnect(
    cluster: Cluster, fake: FakeApi, aof_redis: RedisServer, view: RunView
) -> None:
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
    counted = fault_runs.assert_finished_despite_crash(cluster, fake, view, report, RUN_SIZE)
    figure("outcomes", dict(counted))
