"""The throughput benchmark's baseline: what a user writes today with the official SDK.

``huaweicloudsdksfsturbo`` with AK/SK: for each share, list every page, keep the finished tasks,
delete them one by one. :func:`run_baseline` runs :func:`baseline_child` in its own subprocess
(``python -m tests.benchmarks.bench_throughput --baseline-child ...``, so its CPU is its own)
against a fake seeded with a subset of the tasks.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandbox.fakeapi.process import FakeApiProcess
from tests.benchmarks import procstat
from tests.benchmarks.ours import AK, SK, share_ids_for, write_seed
from tests.benchmarks.results import ROOT
from tests.support.environment import inherited


# --- The baseline: the official SDK, sequential --------------------------------------------------
def baseline_child(endpoint: str, project_id: str, shares: list[str], page: int) -> dict[str, Any]:
    """List each share (all pages) and delete its finished tasks one by one, with the SDK."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdksfsturbo.v1 import DeleteHpcCacheTaskRequest, ListHpcCacheTasksRequest, SFSTurboClient

    imported = time.perf_counter()
    client = (
        SFSTurboClient.new_builder()
        .with_credentials(BasicCredentials(AK, SK, project_id))
        .with_http_config(HttpConfig.get_default_config())
        .with_endpoint(endpoint)
        .build()
    )
    cutoff = datetime.now(UTC).replace(tzinfo=None)  # --older-than 0s; the API's times are UTC
    listed = deleted = errors = pages = 0
    started = time.perf_counter()
    for share_id in shares:
        todo: list[str] = []
        offset = 0
        for _ in range(100_000):  # bounded paging
            answer = client.list_hpc_cache_tasks(ListHpcCacheTasksRequest(share_id=share_id, offset=offset, limit=page))
            tasks = answer.tasks or []
            pages += 1
            listed += len(tasks)
            for task in tasks:
                try:
                    ended = datetime.fromisoformat(task.end_time) if task.end_time else None
                except ValueError:
                    ended = None
                if task.status in ("SUCCESS", "FAIL") and ended is not None and ended <= cutoff:
                    todo.append(task.task_id)
            if len(tasks) < page:
                break
            offset += page
        for task_id in todo:
            try:
                client.delete_hpc_cache_task(DeleteHpcCacheTaskRequest(share_id=share_id, task_id=task_id))
                deleted += 1
            except ClientRequestException:
                errors += 1
    elapsed = time.perf_counter() - started
    return {
        "listed": listed,
        "pages": pages,
        "deleted": deleted,
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "setup_s": round(started - imported, 3),
    }


def run_baseline(tasks: int, latency_ms: float, workdir: Path, page: int = 1000) -> dict[str, Any]:
    shares = share_ids_for(2, seed=99)
    seed_file = workdir / "baseline-seed.jsonl"
    write_seed(seed_file, shares, max(1, tasks // 2), seed=99)
    expected = max(1, tasks // 2) * 2
    with FakeApiProcess(
        seed_file=str(seed_file), latency_ms=latency_ms, aksk={AK: SK}, deleting_seconds=0.0
    ).start() as fake:
        assert fake.proc is not None
        meter = procstat.CpuMeter({"fake": fake.proc.pid}).start()
        env = inherited()
        measured = procstat.run_measured(
            [
                sys.executable, "-m", "tests.benchmarks.bench_throughput", "--baseline-child",
                "--endpoint", fake.url, "--project-id", fake.project_id,
                "--share-ids", ",".join(fake.share_ids), "--page", str(page),
            ],
            env=env, cwd=ROOT, timeout_s=120 + expected * 0.2,
        )  # fmt: skip
        cpu = meter.stop()
        stats = fake.stats()
    if measured.returncode != 0:
        raise RuntimeError(f"the SDK baseline failed ({measured.returncode}):\n{measured.stderr[-3000:]}")
    child = json.loads(measured.stdout.strip().splitlines()[-1])
    deleted = int(child["deleted"])
    return {
        "client": "huaweicloudsdksfsturbo " + _version("huaweicloudsdksfsturbo"),
        "auth": "aksk",
        "tasks": expected,
        "deleted": deleted,
        "errors": child["errors"],
        "listed": child["listed"],
        "pages": child["pages"],
        "elapsed_s": child["elapsed_s"],
        "process_wall_s": round(measured.wall_s, 2),
        "deletions_per_s": round(deleted / child["elapsed_s"], 2) if child["elapsed_s"] else 0.0,
        "cpu_s": {"client": round(measured.cpu_s, 2), "fake": round(cpu["fake"], 2)},
        "cpu_per_1000": {
            "client": procstat.per_thousand(measured.cpu_s, deleted),
            "fake": procstat.per_thousand(cpu["fake"], deleted),
        },
        "server": {"deletes_accepted": stats["deletes_accepted"], "requests_total": stats["requests_total"]},
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"
