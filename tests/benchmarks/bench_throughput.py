"""Throughput: the official SDK in a sequential loop against our service with 2 workers, side by side.

Not a timed test: ``python -m tests.benchmarks throughput [--quick] [--sweep] [--profile]``.

Both sides run against the fake SFS Turbo API as a subprocess (20 ms latency per call, no
server-side rate limit, AK/SK verified by the fake), on the same machine, in the same run:

1. **Baseline**: what a user writes today with ``huaweicloudsdksfsturbo`` (AK/SK): for each
   share, list every page, keep the finished tasks, delete them one by one. It runs in its own
   subprocess (so its CPU is its own) on a separate fake seeded with a subset of the tasks
   (``--baseline-tasks``, 2,000 by default over 2 shares: at about 40/s that is already most of a
   minute); its rate does not depend on how many tasks it deletes.
2. **Ours**: Redis, 2 Celery worker processes, and ``sfs-cleanup purge --older-than 0s --wait
   --json`` as a subprocess, timed from its start to its exit (start-up, listing, planning,
   enqueueing, deleting and the final report all included), against a fresh fake seeded with
   20 shares x 1,000 finished tasks. Once with AK/SK (the fair comparison), once with a token.

Deletions per second of both, their ratio, and CPU seconds per 1,000 deletions for our workers
(every process of each worker's tree), the scheduler (the CLI's own ``wait4`` usage), Redis and
the fake (for context) are printed and written to ``bench-results/throughput.json``.

``--sweep`` also tries ``SFS_CLEANUP_BATCH_CONCURRENCY`` 16/32/64 x ``SFS_CLEANUP_BATCH_SIZE``
100/200 (and 2 pool processes per worker) and reports the best. ``--profile`` runs batch jobs
in-process under a thread-aware profiler (yappi, if installed) plus micro-benchmarks of each
cost of one delete, and samples a real worker with py-spy if it is installed (neither is a
project dependency: ``pip install yappi py-spy`` to get them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from sandbox.fakeapi.process import FakeApiProcess
from sandbox.fakeapi.tasks import format_time
from sandbox.processes import WorkerProcess
from sandbox.redis_server import RedisServer
from tests.benchmarks import procstat
from tests.benchmarks.results import RESULTS_DIR, ROOT, finish, new_doc, targets_table, workdir_for

AK = "BENCHAKAAAAAAAAAAAAA"
SK = "bench-secret-key-not-a-secret"
TARGET_RATIO = 20.0

console = Console(stderr=True)


# --- Inventories ---------------------------------------------------------------------------------
def share_ids_for(count: int, seed: int) -> list[str]:
    rng = random.Random(f"shares-{seed}")
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def write_seed(path: Path, shares: list[str], per_share: int, *, seed: int = 1, with_project: str | None = None) -> int:
    """``per_share`` finished (SUCCESS or FAIL), 30-day-old tasks in each share: all eligible under
    ``--older-than 0s`` and the default statuses. The same lines are a valid manifest when
    ``with_project`` adds the project ID. Returns the number of tasks written."""
    rng = random.Random(seed)
    types = ("import", "import_metadata", "preload", "export")
    end = datetime.now(UTC) - timedelta(days=30)
    end_text, start_text = format_time(end), format_time(end - timedelta(minutes=5))
    written = 0
    with path.open("w", encoding="utf-8") as out:
        for share_id in shares:
            lines = []
            for i in range(per_share):
                record: dict[str, Any] = {}
                if with_project:
                    record["project_id"] = with_project
                record.update(
                    {
                        "share_id": share_id,
                        "task_id": f"{rng.getrandbits(128):032x}",
                        "type": types[i % 4],
                        "status": "SUCCESS" if i % 5 else "FAIL",
                        "src_target": "obs-link",
                        "dest_target": "obs-link",
                        "start_time": start_text,
                        "end_time": end_text,
                    }
                )
                lines.append(json.dumps(record, separators=(",", ":")))
            out.write("\n".join(lines) + ("\n" if lines else ""))
            written += per_share
    return written


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
        env = clean_env()
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


# --- Ours: Redis, 2 Celery workers, the CLI ------------------------------------------------------
@dataclass(frozen=True)
class OurConfig:
    auth: str = "aksk"  # or "token"
    workers: int = 2
    procs: int = 1  # Celery pool processes per worker
    concurrency: int = 16  # SFS_CLEANUP_BATCH_CONCURRENCY
    batch_size: int = 100  # SFS_CLEANUP_BATCH_SIZE

    @property
    def label(self) -> str:
        return f"{self.auth} w{self.workers}x{self.procs} c{self.concurrency} b{self.batch_size}"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFS_CLEANUP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def service_env(redis_url: str, fake: FakeApiProcess, cfg: OurConfig, **extra: str) -> dict[str, str]:
    """The settings of every process of our service for one run (no rate limit to speak of)."""
    env = clean_env()
    env.update(
        {
            "SFS_CLEANUP_REDIS_URL": redis_url,
            "SFS_CLEANUP_API_ENDPOINT": fake.url,
            "SFS_CLEANUP_PROJECT_ID": fake.project_id,
            "SFS_CLEANUP_SHARE_IDS": ",".join(fake.share_ids),
            "SFS_CLEANUP_RATE_LIMIT": "100000",
            "SFS_CLEANUP_RATE_BURST": "1000",
            "SFS_CLEANUP_BATCH_SIZE": str(cfg.batch_size),
            "SFS_CLEANUP_BATCH_CONCURRENCY": str(cfg.concurrency),
            "SFS_CLEANUP_SCHEDULE_ENABLED": "false",
            "SFS_CLEANUP_KEY_PREFIX": "bench",
            "SFS_CLEANUP_LOG_FORMAT": "json",
            "SFS_CLEANUP_LOG_LEVEL": "INFO",  # the default; Celery's " ready." line is INFO too
        }
    )
    if cfg.auth == "aksk":
        env["SFS_CLEANUP_ACCESS_KEY"], env["SFS_CLEANUP_SECRET_KEY"] = AK, SK
    else:
        env["SFS_CLEANUP_AUTH_TOKEN"] = fake.token
    env.update(extra)
    return env


def start_workers(env: dict[str, str], cfg: OurConfig, logdir: Path) -> list[WorkerProcess]:
    workers = [
        WorkerProcess(name=f"bench{i + 1}", env=env, log_path=logdir / f"worker{i + 1}.log", concurrency=cfg.procs)
        for i in range(cfg.workers)
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready(timeout=120)
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.stop(grace=20)


def purge_cli(env: dict[str, str], *args: str, timeout_s: float, workdir: Path) -> tuple[procstat.Measured, Any]:
    """``sfs-cleanup purge ARGS --json`` as a measured child; its measurement and JSON report."""
    measured = procstat.run_measured(
        [sys.executable, "-m", "scheduler.cli", "purge", *args, "--json", "--yes"],
        env=env,
        cwd=ROOT,
        timeout_s=timeout_s,
        workdir=workdir,
    )
    try:
        report = json.loads(measured.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise RuntimeError(f"purge printed no JSON report ({measured.returncode}):\n{measured.stderr[-3000:]}") from exc
    return measured, report


def already_gone_records(client: redis.Redis, run_id: str, prefix: str = "bench", limit: int = 5) -> list[Any]:
    """The audit of tasks that ended ``already_gone`` (at most ``limit``): their outcome and every
    attempt, so a lost answer (a DELETE that took effect but whose answer never came) shows why."""
    found: list[Any] = []
    for key in client.scan_iter(match=f"{prefix}:run:{{{run_id}}}:out:*", count=1000):
        for task_id, value in client.hgetall(key).items():
            if b'"already_gone"' in value and len(found) < limit:
                attempts = client.hget(key.replace(b":out:", b":att:"), task_id) or b""
                found.append(
                    {
                        "task_id": task_id.decode(),
                        "outcome": json.loads(value),
                        "attempts": [json.loads(line) for line in attempts.decode().splitlines() if line],
                    }
                )
    return found


def run_ours(
    server: RedisServer, cfg: OurConfig, *, shares: int, per_share: int, latency_ms: float, workdir: Path
) -> dict[str, Any]:
    """One purge of ``shares x per_share`` tasks by our service; its figures."""
    assert server.proc is not None
    client = redis.Redis.from_url(server.url)
    client.flushall()
    rundir = workdir / cfg.label.replace(" ", "_")
    rundir.mkdir(parents=True, exist_ok=True)
    seed_file = rundir / "seed.jsonl"
    expected = write_seed(seed_file, share_ids_for(shares, seed=1), per_share, seed=1)
    fake = FakeApiProcess(seed_file=str(seed_file), latency_ms=latency_ms, aksk={AK: SK}, deleting_seconds=0.0)
    workers: list[WorkerProcess] = []
    try:
        fake.start()
        assert fake.proc is not None
        env = service_env(server.url, fake, cfg)
        workers = start_workers(env, cfg, rundir)
        roots = {f"worker{i + 1}": w.pid for i, w in enumerate(workers)}
        meter = procstat.CpuMeter({**roots, "redis": server.proc.pid, "fake": fake.proc.pid}).start()
        load_before = procstat.load_average()
        measured, report = purge_cli(
            env, "--older-than", "0s", "--wait", timeout_s=180 + expected / 20, workdir=rundir / "cli"
        )
        cpu = meter.stop()
        load_after = procstat.load_average()
        stats = fake.stats()
        info = client.info("memory")
        gone_records = already_gone_records(client, report["run_id"]) if report["outcomes"].get("already_gone") else []
    finally:
        stop_workers(workers)
        fake.stop()
        client.close()
    deleted = int(report["outcomes"].get("deleted", 0))
    gone = int(report["outcomes"].get("already_gone", 0))
    workers_cpu = sum(cpu[name] for name in roots)
    figures = {
        "label": cfg.label,
        "auth": cfg.auth,
        "workers": cfg.workers,
        "worker_procs": cfg.procs,
        "batch_concurrency": cfg.concurrency,
        "batch_size": cfg.batch_size,
        "tasks": expected,
        "deleted": deleted,
        "status": report.get("status"),
        "exit_code": measured.returncode,
        "wall_s": round(measured.wall_s, 2),
        "run_elapsed_s": report.get("elapsed_s"),
        "deletions_per_s": round(deleted / measured.wall_s, 1),
        "run_deletions_per_s": round(deleted / report["elapsed_s"], 1) if report.get("elapsed_s") else None,
        "cpu_s": {
            "workers": round(workers_cpu, 2),
            **{name: round(cpu[name], 2) for name in roots},
            "scheduler": round(measured.cpu_s, 2),
            "redis": round(cpu["redis"], 2),
            "fake": round(cpu["fake"], 2),
        },
        "workers_system_share": round(sum(meter.sys_s[name] for name in roots) / workers_cpu, 2)
        if workers_cpu
        else None,
        "cpu_per_1000": {
            "workers": procstat.per_thousand(workers_cpu, deleted),
            "scheduler": procstat.per_thousand(measured.cpu_s, deleted),
            "redis": procstat.per_thousand(cpu["redis"], deleted),
            "ours_total": procstat.per_thousand(workers_cpu + measured.cpu_s + cpu["redis"], deleted),
            "fake": procstat.per_thousand(cpu["fake"], deleted),
        },
        "cores_busy": round((workers_cpu + measured.cpu_s + cpu["redis"] + cpu["fake"]) / measured.wall_s, 2),
        # What the CPU cost allows on this machine's cores if nothing else ran: with the fake
        # sharing them (as here), and without it (the real API is elsewhere).
        "cpu_bound_deletions_per_s": _bound(workers_cpu + measured.cpu_s + cpu["redis"] + cpu["fake"], deleted),
        "cpu_bound_deletions_per_s_without_fake": _bound(workers_cpu + measured.cpu_s + cpu["redis"], deleted),
        "scheduler_peak_rss_mb": round(measured.maxrss_kb / 1024, 1),
        "workers_peak_rss_mb": round(sum(meter.peak_rss_kb[name] for name in roots) / 1024, 1),
        "redis_used_memory_mb": round(int(info["used_memory"]) / 2**20, 1),
        "server": {
            "deletes_accepted": stats["deletes_accepted"],
            "duplicate_deletes": stats["duplicate_deletes"],
            "requests_total": stats["requests_total"],
            "busiest_second": stats["busiest_second"],
            "max_in_flight": stats["max_in_flight"],
        },
        "already_gone": gone,
        "already_gone_audit": gone_records,
        # Every selected task gone at the server and accounted for once in the audit. A DELETE
        # whose answer was lost (no answer within the read timeout) and that was sent again
        # ends as already_gone: the server then shows a duplicate DELETE (reported, not hidden).
        "agree": report.get("status") == "finished" and deleted + gone == expected == stats["deletes_accepted"],
        "load_before": load_before,
        "load_after": load_after,
    }
    console.print(
        f"  {cfg.label}: {deleted}/{expected} deleted in {measured.wall_s:.1f} s = "
        f"{figures['deletions_per_s']}/s; worker CPU {figures['cpu_per_1000']['workers']} s per 1,000"
    )
    return figures


def _bound(cpu_s: float, deleted: int) -> float | None:
    return round(procstat.cpu_count() * deleted / cpu_s, 1) if cpu_s > 0 else None


# --- Profile: where a worker's CPU goes ---------------------------------------------------------------
def _cpu_us(fn: Any, n: int) -> float:
    """CPU microseconds (this process, every thread) per call of ``fn``, over ``n`` calls."""
    fn()  # warm up: connections, script loading
    start = time.process_time()
    for _ in range(n):
        fn()
    return round((time.process_time() - start) * 1e6 / n, 1)


def micro_costs(
    rt: Any, fake: FakeApiProcess, share_id: str, token_client: Any, n: int, latency_ms: float
) -> dict[str, float]:
    """CPU per call of each piece of one delete, one thread, the fake at 0 ms latency."""
    import httpx
    import structlog
    from pydantic import SecretStr

    from worker.api.signer import AkSkCredentials, sign
    from worker.ledger import Attempt, Batch, FinalOutcome, Outcome

    fake.configure(latency_ms=0.0)
    missing = iter(f"{i:032x}" for i in range(10 * n + 100))  # unknown tasks: 400 SFS.TURBO.0106
    creds = AkSkCredentials(AK, SecretStr(SK))
    url = f"{fake.url}/v1/{fake.project_id}/sfs-turbo/{share_id}/hpc-cache/task/{'a' * 32}"
    batch = Batch("micro-run", 0, share_id, tuple(f"{i:032x}" for i in range(64)))
    attempt = Attempt(1, time.time(), 202, "ok", "f" * 32, latency_ms=21.3, worker="host:123:celery-task-id")
    final = FinalOutcome(Outcome.DELETED, time.time(), 1, 202, request_id="f" * 32)

    def record_64() -> None:
        pipe = rt.audit.redis.pipeline(transaction=False)
        for task_id in batch.task_ids:
            rt.audit.record(batch, task_id, attempt=attempt, final=final, pipe=pipe)
        pipe.execute()

    def threaded_us(fn: Any, n: int, threads: int = 16) -> float:
        """CPU per call of ``fn`` called from ``threads`` threads at once, as in a batch job."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as workers:
            list(workers.map(lambda _: fn(), range(threads)))  # warm up
            start = time.process_time()
            list(workers.map(lambda _: fn(), range(n)))
            return round((time.process_time() - start) * 1e6 / n, 1)

    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", int(fake.url.rsplit(":", 1)[1]), maxsize=16)
    path = f"/v1/{fake.project_id}/sfs-turbo/{share_id}/hpc-cache/task/"
    headers = {"X-Auth-Token": fake.token, "Content-Type": "application/json"}
    costs = {
        "limiter.acquire (EVALSHA acquire.lua)": _cpu_us(rt.limiter.acquire, n),
        "limiter.acquire, 16 threads at once": threaded_us(rt.limiter.acquire, n),
        "limiter.record_result (batched)": _cpu_us(lambda: rt.limiter.record_result(server_error=False), n),
        "DELETE with AK/SK (httpx + signing + answer)": _cpu_us(
            lambda: rt.client.delete_task(share_id, next(missing)), n
        ),
        "DELETE with AK/SK, 16 threads at once": threaded_us(lambda: rt.client.delete_task(share_id, next(missing)), n),
        "DELETE with a token (httpx + answer)": _cpu_us(lambda: token_client.delete_task(share_id, next(missing)), n),
        "DELETE with a token, urllib3 instead of httpx (comparison)": _cpu_us(
            lambda: pool.urlopen("DELETE", path + next(missing), headers=headers).data, n
        ),
        "AK/SK signing alone": _cpu_us(lambda: sign(httpx.Request("DELETE", url), creds, fake.project_id), n),
        "audit record, pipelined by 64 (per task)": round(_cpu_us(record_64, max(1, n // 64)) / 64, 1),
        "Attempt + FinalOutcome to JSON": _cpu_us(lambda: (attempt.to_json(), final.to_json()), n),
        "structlog bind_contextvars": _cpu_us(lambda: structlog.contextvars.bind_contextvars(run_id="r", batch=1), n),
        "thread pool submit + result": _cpu_us(lambda: rt.pool.submit(int).result(), n),
    }
    pool.close()
    fake.configure(latency_ms=latency_ms)
    return costs


def _plan(rt: Any, settings: Any, run_id: str) -> int:
    from scheduler.context import Context
    from scheduler.inventory import read_live
    from scheduler.planner import plan_run
    from scheduler.policy import policy_from_sources

    ctx = Context(settings)
    policy = policy_from_sources(settings=settings, file=None, overrides={"older_than": "0s"})
    assert settings.project_id is not None
    items = read_live(ctx.client(), settings.project_id, settings.share_ids)
    plan = plan_run(rt.audit, settings, policy, items, run_id=run_id, dry_run=False, trigger="bench", source="bench")
    return plan.batches


def _jobs_cpu(rt: Any, settings: Any, run_id: str, profiler: Any = None) -> dict[str, float]:
    """Plan a run and run its batch jobs in this process, one after another: CPU per delete."""
    from worker.purge import BatchJob

    batches = _plan(rt, settings, run_id)
    if profiler is not None:
        profiler.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deleted = 0
    for number in range(batches):
        result = BatchJob(rt, run_id, number, "bench-holder").run()
        deleted += result.outcomes.get("deleted", 0)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if profiler is not None:
        profiler.stop()
    return {
        "deleted": deleted,
        "cpu_us_per_delete": round(cpu * 1e6 / max(1, deleted), 1),
        "deletions_per_s": round(deleted / wall, 1),
    }


def _yappi_top(stats: Any, deleted: int, limit: int = 25) -> list[dict[str, Any]]:
    rows = sorted(stats, key=lambda s: s.tsub, reverse=True)[:limit]
    return [
        {
            "function": f"{Path(s.module).name}:{s.name}",
            "own_us_per_delete": round(s.tsub * 1e6 / max(1, deleted), 1),
            "total_us_per_delete": round(s.ttot * 1e6 / max(1, deleted), 1),
            "calls_per_delete": round(s.ncall / max(1, deleted), 2),
        }
        for s in rows
    ]


def _file(frame: str) -> str:
    """``worker/purge/deciding.py`` of a py-spy frame ``BatchJob._one (worker/purge/deciding.py:45)``."""
    return frame.rpartition("(")[2].rpartition(":")[0]


def _ours(frame: str) -> bool:
    return _file(frame).startswith("worker/")


# The cost category of a sampled stack is decided by its deepest frame in our own code (the
# ``worker`` package), and by what that frame was calling; first match wins.
_CATEGORIES: tuple[tuple[str, Any], ...] = (
    ("logging (structlog, logging)", lambda f, below: any("structlog/" in b or "logging/" in b for b in below)),
    ("AK/SK signing", lambda f, below: _file(f) == "worker/api/signer.py"),
    ("auth header (httpx.Auth flow)", lambda f, below: _file(f).startswith("worker/api/auth/")),
    (
        "HTTP client set-up (SSL context per client)",
        lambda f, below: any("create_default_context" in b or "SSLContext" in b for b in below),
    ),
    ("HTTP request + answer (httpx, httpcore)", lambda f, below: _file(f).startswith("worker/api/")),
    ("fleet limiter (EVALSHA per request)", lambda f, below: _file(f).startswith("worker/ratelimit/")),
    ("audit: records to JSON", lambda f, below: _file(f).startswith("worker/ledger/") and "to_json" in f),
    (
        "audit: ledger pipelines (record.lua)",
        lambda f, below: _file(f).startswith("worker/ledger/") and f.startswith(("RecordBuffer", "Audit.record")),
    ),
    ("audit: reads, leases, batch set-up", lambda f, below: _file(f).startswith("worker/ledger/")),
    ("thread pool hand-off", lambda f, below: any("concurrent/futures" in b or "threading.py" in b for b in below)),
    ("job logic (worker/purge)", lambda f, below: _file(f).startswith("worker/purge/")),
)


def classify_stack(frames: list[str]) -> str:
    """The cost category of one sampled stack (frames root first), see :data:`_CATEGORIES`."""
    own = [i for i, frame in enumerate(frames) if _ours(frame)]
    if not own:
        files = [_file(frame) for frame in frames]
        if any(f.startswith(("celery/", "kombu/", "billiard/", "redis/")) for f in files):
            return "Celery, kombu, billiard (consumer, events, acks)"
        if any(f.startswith("concurrent/futures") or f == "threading.py" for f in files):
            return "thread pool (idle threads waking)"
        return "other"
    deepest = own[-1]
    frame, below = frames[deepest], frames[deepest + 1 :]
    for name, rule in _CATEGORIES:
        if rule(frame, below):
            return name
    return f"other ours ({_file(frame)})"


def read_pyspy(paths: list[Path]) -> tuple[dict[str, int], dict[str, int], int]:
    """Collapsed stacks (``py-spy record -f raw``): samples per category and per leaf function."""
    categories: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            # Drop py-spy's "process N" / thread roots; keep "function (file:line)" frames.
            frames = [f for f in frames if "(" in f and not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += count
            category = classify_stack(frames)
            categories[category] = categories.get(category, 0) + count
            leaf = frames[-1].rsplit(":", 1)[0] + ")"
            leaves[leaf] = leaves.get(leaf, 0) + count
    return categories, leaves, total


def pyspy_workers(server: RedisServer, workdir: Path, *, shares: int, per_share: int, latency_ms: float) -> Any:
    """Sample both real Celery workers (main process and pool children) with py-spy during a purge."""
    import shutil
    import signal
    import subprocess

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    assert server.proc is not None
    cfg = OurConfig("aksk")
    rundir = workdir / "pyspy"
    rundir.mkdir(parents=True, exist_ok=True)
    seed_file = rundir / "seed.jsonl"
    expected = write_seed(seed_file, share_ids_for(shares, seed=5), per_share, seed=5)
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    spies: list[subprocess.Popen[bytes]] = []
    outputs: list[Path] = []
    fake = FakeApiProcess(seed_file=str(seed_file), latency_ms=latency_ms, aksk={AK: SK}, deleting_seconds=0.0)
    workers: list[WorkerProcess] = []
    try:
        fake.start()
        env = service_env(server.url, fake, cfg)
        workers = start_workers(env, cfg, rundir)
        roots = {f"worker{i + 1}": w.pid for i, w in enumerate(workers)}
        for i, worker in enumerate(workers):
            out = rundir / f"pyspy-worker{i + 1}.txt"
            outputs.append(out)
            spies.append(
                subprocess.Popen(
                    [
                        pyspy,
                        "record",
                        "--pid",
                        str(worker.pid),
                        "--subprocesses",
                        "--nonblocking",
                        "--gil",
                        "--rate",
                        "250",
                        "--format",
                        "raw",
                        "--output",
                        str(out),
                        "--duration",
                        "600",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # py-spy attaches
        meter = procstat.CpuMeter(roots).start()
        measured, report = purge_cli(env, "--older-than", "0s", "--wait", timeout_s=300, workdir=rundir / "cli")
        cpu = meter.stop()
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
        stop_workers(workers)
        fake.stop()
    deleted = int(report["outcomes"].get("deleted", 0))
    categories, leaves, total = read_pyspy(outputs)
    worker_cpu = sum(cpu.values())
    us_per_delete = worker_cpu * 1e6 / max(1, deleted)

    def per_delete(samples: int) -> float:
        return round(us_per_delete * samples / max(1, total), 1)

    return {
        "tasks": expected,
        "deleted": deleted,
        "wall_s": round(measured.wall_s, 2),
        "deletions_per_s_under_sampling": round(deleted / measured.wall_s, 1),
        "worker_cpu_us_per_delete": round(us_per_delete, 1),
        "samples": total,
        "categories": [
            {"category": name, "share": round(n / max(1, total), 3), "us_per_delete": per_delete(n)}
            for name, n in sorted(categories.items(), key=lambda kv: -kv[1])
        ],
        "top_leaf_functions": [
            {"function": name, "share": round(n / max(1, total), 3), "us_per_delete": per_delete(n)}
            for name, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:20]
        ],
    }


def profile(server: RedisServer, workdir: Path, *, tasks: int, latency_ms: float, concurrency: int) -> dict[str, Any]:
    """Where a worker's CPU goes per delete: micro-costs, in-process jobs, py-spy on real workers."""
    from pydantic import SecretStr

    from worker.api.auth import TokenAuth
    from worker.api.client import ClientConfig, SfsTurboClient
    from worker.runtime import close_runtime, get_runtime
    from worker.settings import load_settings

    shares = 4
    per_share = max(1, tasks // shares)
    seed_file = workdir / "profile-seed.jsonl"
    share_ids = share_ids_for(shares, seed=3)
    # Twice the tasks: a plain run, then a smaller one under yappi (8 to 10 times slower).
    write_seed(seed_file, share_ids, per_share * 2, seed=3)
    result: dict[str, Any] = {"tasks": shares * per_share, "batch_concurrency": concurrency}
    client = redis.Redis.from_url(server.url)
    client.flushall()
    with FakeApiProcess(
        seed_file=str(seed_file), latency_ms=latency_ms, aksk={AK: SK}, deleting_seconds=0.0
    ).start() as fake:
        base = service_env(server.url, fake, OurConfig("aksk", concurrency=concurrency))
        fields = {k.removeprefix("SFS_CLEANUP_").lower(): v for k, v in base.items() if k.startswith("SFS_CLEANUP_")}
        close_runtime()
        settings = load_settings(**fields, max_deletions=shares * per_share)
        rt = get_runtime(settings)
        console.print("  profile: batch jobs in this process (no Celery) ...")
        result["in_process"] = _jobs_cpu(rt, settings, "bench-profile-plain")
        try:
            import yappi
        except ImportError:
            result["yappi"] = {"skipped": "yappi is not installed (pip install yappi)"}
        else:
            yappi.set_clock_type("cpu")
            yappi.clear_stats()
            small = load_settings(**fields, max_deletions=min(shares * per_share, 800))
            figures = _jobs_cpu(rt, small, "bench-profile-yappi", profiler=yappi)
            result["yappi"] = {**figures, "top_own_time": _yappi_top(yappi.get_func_stats(), figures["deleted"])}
            yappi.clear_stats()
        token_client = SfsTurboClient(ClientConfig.from_settings(settings), auth=TokenAuth(SecretStr(fake.token)))
        console.print("  profile: micro-costs of one delete ...")
        result["micro_us_per_call"] = micro_costs(rt, fake, share_ids[0], token_client, n=2000, latency_ms=latency_ms)
        token_client.close()
        close_runtime()
    client.close()
    console.print("  profile: py-spy on 2 real workers during a purge ...")
    result["pyspy"] = pyspy_workers(
        server, workdir, shares=shares, per_share=max(250, tasks // shares), latency_ms=latency_ms
    )
    return result


def render_profile(profile_doc: dict[str, Any], out: Console) -> None:
    inproc = profile_doc.get("in_process", {})
    table = Table(title="Worker CPU per delete: micro-costs (one thread, fake at 0 ms)")
    table.add_column("piece")
    table.add_column("CPU us per call", justify="right")
    for name, value in profile_doc.get("micro_us_per_call", {}).items():
        table.add_row(name, f"{value:.1f}")
    table.caption = (
        f"in-process batch jobs (no Celery): {inproc.get('cpu_us_per_delete')} us CPU per delete "
        f"at {inproc.get('deletions_per_s')}/s"
    )
    out.print(table)
    yap = profile_doc.get("yappi", {})
    if yap.get("top_own_time"):
        table = Table(
            title=f"In-process jobs under yappi (CPU clock, every thread): {yap['cpu_us_per_delete']} us per delete; "
            "a deterministic profiler inflates small calls: read the call counts"
        )
        table.add_column("function")
        table.add_column("own us/delete", justify="right")
        table.add_column("total us/delete", justify="right")
        table.add_column("calls/delete", justify="right")
        for row in yap["top_own_time"][:12]:
            table.add_row(
                row["function"],
                f"{row['own_us_per_delete']:.0f}",
                f"{row['total_us_per_delete']:.0f}",
                f"{row['calls_per_delete']:g}",
            )
        out.print(table)
    spy = profile_doc.get("pyspy", {})
    if spy.get("categories"):
        table = Table(
            title=f"Real workers sampled by py-spy: {spy['worker_cpu_us_per_delete']} us CPU per delete "
            f"({spy['samples']} samples)"
        )
        table.add_column("category")
        table.add_column("share", justify="right")
        table.add_column("us per delete", justify="right")
        for row in spy["categories"]:
            table.add_row(row["category"], f"{row['share']:.1%}", f"{row['us_per_delete']:.0f}")
        out.print(table)
        table = Table(title="Top leaf functions (py-spy, own time)")
        table.add_column("function")
        table.add_column("share", justify="right")
        table.add_column("us per delete", justify="right")
        for row in spy["top_leaf_functions"][:15]:
            table.add_row(row["function"], f"{row['share']:.1%}", f"{row['us_per_delete']:.0f}")
        out.print(table)


# --- Output -------------------------------------------------------------------------------------------
def render(doc: dict[str, Any]) -> None:
    out = Console(width=max(console.width, 150))
    base = doc["baseline"]
    if base is None:
        if doc.get("profile"):
            render_profile(doc["profile"], out)
        return
    table = Table(title="Throughput: deletions per second (fake API, 20 ms latency, no rate limit)")
    for column in (
        "run",
        "deleted",
        "wall s",
        "del/s",
        "x SDK",
        "workers",
        "scheduler",
        "redis",
        "fake",
        "cores",
        "CPU bound/s",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")
    table.add_row(
        f"SDK sequential ({base['auth']})",
        str(base["deleted"]),
        f"{base['elapsed_s']:.1f}",
        f"{base['deletions_per_s']:.1f}",
        "1.0",
        f"client {base['cpu_per_1000']['client']}",
        "",
        "",
        str(base["cpu_per_1000"]["fake"]),
        "",
        "",
    )
    for run in doc["ours"] + doc.get("sweep", []):
        cpu = run["cpu_per_1000"]
        table.add_row(
            run["label"],
            f"{run['deleted']}/{run['tasks']}",
            f"{run['wall_s']:.1f}",
            f"{run['deletions_per_s']:.1f}",
            f"{run['ratio']:.1f}",
            str(cpu["workers"]),
            str(cpu["scheduler"]),
            str(cpu["redis"]),
            str(cpu["fake"]),
            str(run["cores_busy"]),
            f"{run['cpu_bound_deletions_per_s']} (x{run['cpu_bound_ratio']})",
        )
    table.caption = (
        "CPU columns: CPU seconds per 1,000 deletions. cores: CPU of all the processes / wall time. "
        "CPU bound: the rate this CPU cost allows on all the machine's cores (fake included), and its ratio."
    )
    out.print(table)
    out.print(targets_table(doc["targets"]))
    if doc.get("duplicate_deletes"):
        out.print(
            f"note: the fake saw {doc['duplicate_deletes']} DELETE(s) sent twice: an answer lost (read timeout), "
            "the retry answered 'already gone' (see already_gone in the JSON)"
        )
    if doc.get("profile"):
        render_profile(doc["profile"], out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for trying things out (about a minute)")
    p.add_argument("--sweep", action="store_true", help="also try batch concurrency 16/32/64 x batch size 100/200")
    p.add_argument("--profile", action="store_true", help="also profile worker CPU per delete")
    p.add_argument("--profile-only", action="store_true", help="only the profile (no baseline, no runs)")
    p.add_argument("--shares", type=int, default=20)
    p.add_argument("--tasks-per-share", type=int, default=1000)
    p.add_argument("--baseline-tasks", type=int, default=2000)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--auth", default="aksk,token", help="auth modes of our runs, comma-separated: aksk, token")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--worker-procs",
        type=int,
        default=2,
        help="Celery pool processes per worker (-c); 2 overlaps one job's tail with the next",
    )
    p.add_argument("--concurrency", type=int, default=16, help="SFS_CLEANUP_BATCH_CONCURRENCY")
    p.add_argument("--batch-size", type=int, default=100, help="SFS_CLEANUP_BATCH_SIZE")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "throughput.json")
    # The baseline's own subprocess.
    p.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--project-id", help=argparse.SUPPRESS)
    p.add_argument("--share-ids", default="", help=argparse.SUPPRESS)
    p.add_argument("--page", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=None, help="logs and inventories (default: a new temp dir)")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        console.print(f"throughput: ignoring options for other benchmarks: {' '.join(unknown)}")
    if args.quick:
        args.shares, args.tasks_per_share, args.baseline_tasks = (
            min(args.shares, 4),
            min(args.tasks_per_share, 500),
            200,
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_child:
        result = baseline_child(args.endpoint, args.project_id, args.share_ids.split(","), args.page)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    workdir = workdir_for(args.workdir, "throughput")
    started = time.time()
    doc = new_doc(
        "throughput",
        procstat.machine(),
        command="python -m tests.benchmarks.bench_throughput " + " ".join(argv or sys.argv[1:]),
        params={
            "quick": args.quick,
            "shares": args.shares,
            "tasks_per_share": args.tasks_per_share,
            "baseline_tasks": args.baseline_tasks,
            "latency_ms": args.latency_ms,
            "fake_rate_limit": 0,
            "our_rate_limit": 100000,
            "our_rate_burst": 1000,
            "workers": args.workers,
            "worker_procs": args.worker_procs,
            "batch_concurrency": args.concurrency,
            "batch_size": args.batch_size,
            "redis_appendonly": True,
            "log_level": "INFO",
        },
        baseline=None,
        ours=[],
    )
    console.print(f"throughput: work files in {workdir}; load average {procstat.load_average()}")
    if not args.profile_only:
        console.print(f"  baseline: the SDK deleting {args.baseline_tasks} tasks sequentially ...")
        doc["baseline"] = run_baseline(args.baseline_tasks, args.latency_ms, workdir)
        console.print(f"  baseline: {doc['baseline']['deletions_per_s']}/s")
    with RedisServer(appendonly=True) as server:
        configs: list[tuple[str, OurConfig]] = []
        if not args.profile_only:
            configs += [
                ("ours", OurConfig(auth, args.workers, args.worker_procs, args.concurrency, args.batch_size))
                for auth in [a.strip() for a in args.auth.split(",") if a.strip()]
            ]
            if args.sweep:
                doc["sweep"] = []
                configs += [("sweep", cfg) for cfg in sweep_configs(args)]
        for part, cfg in configs:
            doc[part].append(
                run_ours(
                    server,
                    cfg,
                    shares=args.shares,
                    per_share=args.tasks_per_share,
                    latency_ms=args.latency_ms,
                    workdir=workdir,
                )
            )
        if args.profile or args.profile_only:
            doc["profile"] = profile(
                server,
                workdir,
                tasks=1000 if args.quick else 4000,
                latency_ms=args.latency_ms,
                concurrency=args.concurrency,
            )
    doc["targets"] = targets(doc, args)
    finish(doc, args.output, started, workdir)
    render(doc)
    console.print(f"figures written to {args.output}")
    return 0 if all(t["met"] for t in doc["targets"]) else 1


def targets(doc: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ratios against the baseline, the best of the sweep, and the targets checked."""
    runs = doc["ours"] + doc.get("sweep", [])
    if doc["baseline"] is None or not runs:
        return []
    base_rate = doc["baseline"]["deletions_per_s"]
    for run in runs:
        run["ratio"] = round(run["deletions_per_s"] / base_rate, 1) if base_rate else None
        bound = run.get("cpu_bound_deletions_per_s")
        run["cpu_bound_ratio"] = round(bound / base_rate, 1) if base_rate and bound else None
    aksk = [r for r in doc["ours"] if r["auth"] == "aksk"]
    main_run = aksk[0] if aksk else doc["ours"][0]
    doc["ratio"] = main_run["ratio"]
    if doc.get("sweep"):
        best = max([r for r in runs if r["auth"] == "aksk"], key=lambda r: r["deletions_per_s"])
        doc["best"] = {k: best[k] for k in ("label", "deletions_per_s", "ratio", "cpu_per_1000")}
    agree = all(r["agree"] for r in runs)
    # Informative: a DELETE sent twice means an answer was lost and the retry found the task gone.
    doc["duplicate_deletes"] = sum(r["server"]["duplicate_deletes"] for r in runs)
    return [
        {
            "name": f"ratio >= {TARGET_RATIO:g} with {args.workers} workers on {procstat.cpu_count()} cores "
            f"({main_run['label']})",
            "target": TARGET_RATIO,
            "measured": main_run["ratio"],
            "met": bool(main_run["ratio"] and main_run["ratio"] >= TARGET_RATIO),
        },
        {
            "name": "every selected task deleted; audit agrees with the server",
            "target": True,
            "measured": agree,
            "met": agree,
        },
    ]


def sweep_configs(args: argparse.Namespace) -> list[OurConfig]:
    configs = [
        OurConfig("aksk", args.workers, args.worker_procs, concurrency, size)
        for size in (100, 200)
        for concurrency in (16, 32, 64)
    ]
    configs.append(OurConfig("aksk", args.workers, 2, 32, 100))
    base = OurConfig("aksk", args.workers, args.worker_procs, args.concurrency, args.batch_size)
    return [c for c in configs if c != base]


if __name__ == "__main__":
    raise SystemExit(main())
