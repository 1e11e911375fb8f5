"""The throughput benchmark's ``--profile``: where a worker's CPU goes per delete.

Micro-benchmarks of each cost of one delete, batch jobs run in this process (under yappi, a
thread-aware profiler, when it is installed), and real workers sampled by py-spy during a purge
(when it is installed), each sampled stack put in a cost category by :func:`classify_stack`.
Neither profiler is a project dependency: ``pip install yappi py-spy`` to get them. Named
``profiling`` rather than ``profile``, the standard library module that ``cProfile`` imports.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from sandbox.fakeapi.process import FakeApiProcess
from sandbox.processes import WorkerProcess
from sandbox.redis_server import RedisServer
from tests.benchmarks import procstat
from tests.benchmarks.ours import (
    AK,
    SK,
    OurConfig,
    purge_cli,
    service_env,
    share_ids_for,
    start_workers,
    write_seed,
)
from tests.support.environment import stop_workers

console = Console(stderr=True)


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

    from worker.api.signer import AkSkCredentials, sign, sign_headers
    from worker.ledger import Attempt, Batch, FinalOutcome, Outcome
    from worker.ledger.outcomes import RecordItem

    fake.configure(latency_ms=0.0)
    missing = iter(f"{i:032x}" for i in range(10 * n + 100))  # unknown tasks: 400 SFS.TURBO.0106
    creds = AkSkCredentials(AK, SecretStr(SK))
    wire_path = f"/v1/{fake.project_id}/sfs-turbo/{share_id}/hpc-cache/task/{'a' * 32}"
    url = fake.url + wire_path
    batch = Batch("micro-run", 0, share_id, tuple(f"{i:032x}" for i in range(64)))
    attempt = Attempt(1, time.time(), 202, "ok", "f" * 32, latency_ms=21.3, worker="host:123:celery-task-id")
    final = FinalOutcome(Outcome.DELETED, time.time(), 1, 202, request_id="f" * 32)

    def record_64() -> None:
        items = [RecordItem(batch, task_id, attempt, final) for task_id in batch.task_ids]
        rt.audit.record_many(items, transaction=False)

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
        "DELETE with AK/SK (whole client call: signing, the wire)": _cpu_us(
            lambda: rt.client.delete_task(share_id, next(missing)), n
        ),
        "DELETE with AK/SK, 16 threads at once": threaded_us(lambda: rt.client.delete_task(share_id, next(missing)), n),
        "DELETE with a token (whole client call)": _cpu_us(
            lambda: token_client.delete_task(share_id, next(missing)), n
        ),
        "DELETE with a token, bare urllib3 (comparison)": _cpu_us(
            lambda: pool.urlopen("DELETE", path + next(missing), headers=headers).data, n
        ),
        "AK/SK signing alone (httpx request)": _cpu_us(
            lambda: sign(httpx.Request("DELETE", url), creds, fake.project_id), n
        ),
        "AK/SK signing alone (the wire's header dict)": _cpu_us(
            lambda: sign_headers("DELETE", wire_path, {"Host": "h", "User-Agent": "u"}, creds, fake.project_id), n
        ),
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


def _json(frame: str) -> bool:
    return frame.startswith(("compact_json", "Attempt.to_json", "FinalOutcome.to_json"))


def _ours(frame: str) -> bool:
    return _file(frame).startswith("worker/")


# The cost category of a sampled stack is decided by its deepest frame in our own code (the
# ``worker`` package), and by what that frame was calling; first match wins. The Redis wire of
# the scripts (``worker/luascripts.py``) is shared by the gate, the records and the limiter: a
# stack that ends there counts for the frame that called it, so each of them shows its whole cost.
_WIRE = "worker/luascripts.py"
_GATE = ("OutcomeStore.gate", "OutcomeStore._gate")
_RECORDS = ("RecordBuffer", "Audit.record", "OutcomeStore.record", "OutcomeStore._record")
_CATEGORIES: tuple[tuple[str, Any], ...] = (
    ("logging (structlog, logging)", lambda f, below: any("structlog/" in b or "logging/" in b for b in below)),
    ("AK/SK signing", lambda f, below: _file(f) == "worker/api/signer.py"),
    ("auth header (httpx.Auth flow)", lambda f, below: _file(f).startswith("worker/api/auth/")),
    (
        "HTTP client set-up (SSL context per client)",
        lambda f, below: any("create_default_context" in b or "SSLContext" in b for b in below),
    ),
    (
        "HTTP request + answer (worker/api: the wire, httpx for listings)",
        lambda f, below: _file(f).startswith("worker/api/"),
    ),
    ("fleet limiter (acquire.lua, its Redis calls)", lambda f, below: _file(f).startswith("worker/ratelimit/")),
    (
        "audit: records to JSON",
        lambda f, below: _file(f).startswith("worker/ledger/") and _json(f),
    ),
    ("audit: hash chain (SHA-256 steps)", lambda f, below: _file(f) == "worker/ledger/chain.py"),
    (
        "audit: write-ahead gate (gate.lua, its Redis calls)",
        lambda f, below: _file(f).startswith("worker/ledger/") and f.startswith(_GATE),
    ),
    (
        "audit: records (record.lua, its Redis calls)",
        lambda f, below: _file(f).startswith("worker/ledger/") and f.startswith(_RECORDS),
    ),
    (
        "audit: run-end compaction (the last job of a run)",
        lambda f, below: _file(f).startswith("worker/ledger/") and f.startswith("RunStore.on_run_over"),
    ),
    ("audit: reads, leases, batch set-up", lambda f, below: _file(f).startswith("worker/ledger/")),
    ("API metrics (worker/apimetrics.py)", lambda f, below: _file(f) == "worker/apimetrics.py"),
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
    callers = [i for i in own if _file(frames[i]) != _WIRE]
    deepest = callers[-1] if callers and _file(frames[own[-1]]) == _WIRE else own[-1]
    frame, below = frames[deepest], frames[deepest + 1 :]
    if _file(frame).startswith("worker/ledger/") and not _json(frame) and _file(frame) != "worker/ledger/chain.py":
        # Helpers the gate and the records share (the chain cache's locks, the keys) count for
        # the ledger call that ran them: its outermost frame (or the run-end compaction).
        ledger = [frames[i] for i in own if _file(frames[i]).startswith("worker/ledger/")]
        compaction = [f for f in ledger if f.startswith("RunStore.on_run_over")]
        frame = compaction[0] if compaction else ledger[0]
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
    # The size of the throughput run (20 shares, 20,000 tasks; 5,000 with --quick): a shorter
    # purge gave py-spy only about 200 samples of the workers holding the GIL.
    result["pyspy"] = pyspy_workers(server, workdir, shares=20, per_share=max(250, tasks // 4), latency_ms=latency_ms)
    return result
