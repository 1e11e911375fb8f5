"""Fixtures and the closing check the fault tests share (their helpers are in :mod:`tests.support.faults`).

A test module binds the fixtures to module names (``cluster = fault_runs.cluster``) instead of
importing them by name: pytest finds a fixture by the module attribute it is bound to, and an
imported name that is only ever a test's parameter reads to ruff as unused (F401, F811).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.fakeapi.server import FakeApi
from tests.support.cluster import Cluster
from tests.support.faults import FAST, RunView, assert_one_outcome_per_task, explain_duplicates, export_rows, figure


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    """The module's ``fake`` and ``redis_url`` with the fault tests' short timings (:data:`FAST`);
    whatever workers are left are stopped after the test."""
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings=dict(FAST))
    yield c
    c.stop()


@pytest.fixture
def view(redis_url: str) -> Iterator[RunView]:
    """The run ledger in ``redis_url``, read straight from Redis."""
    v = RunView(redis_url)
    yield v
    v.close()


def assert_finished_despite_crash(
    cluster: Cluster, fake: FakeApi, view: RunView, report: dict[str, Any], size: int
) -> Counter[str]:
    """One final outcome per task; every DELETE accounted for; duplicates only in the crash window.

    Returns the outcomes counted from the audit's export.
    """
    run_id = str(report["run_id"])
    assert report["status"] == "finished", report
    assert report["selected"] == size
    rows = export_rows(cluster, run_id)
    counted = assert_one_outcome_per_task(report, rows)
    assert set(counted) <= {"deleted", "already_gone"}, counted
    dups = explain_duplicates(fake, view, [run_id])
    stats = fake.stats()
    dup_tasks = {d["task_id"] for d in stats["duplicates"]}
    figure("duplicate DELETEs", f"{dups.total} ({len(dup_tasks)} tasks)")
    figure("  explained: outcome already_gone", dups.already_gone)
    figure("  explained: deleted recorded after the duplicate", dups.recorded_later)
    figure("  explained: a killed sender's DELETE arriving late", dups.late_arrival)
    # Every accepted DELETE is in the audit as `deleted`: its write-ahead record was in Redis
    # before it left, so when the worker that sent it died (or Redis went away) before its answer
    # was written, the next delivery's "already gone" confirms our own delete.
    assert counted["deleted"] == stats["deletes_accepted"] == size, counted
    assert counted["already_gone"] == 0, counted
    by_task = {r["task_id"]: r for r in rows}
    for record in fake.deleted():
        row = by_task[record["task_id"]]
        assert row["attempts"] >= 1, row
    return counted
