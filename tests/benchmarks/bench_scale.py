"""Scale: planning and enqueueing a million tasks, the scheduler's memory, and Redis's.

Not a timed test: ``python -m tests.benchmarks scale [--quick] [--profile]``.

1. **Manifest**: a JSON-lines manifest of N finished, old tasks over 100 shares (N = 100,000
   and 1,000,000) is planned and enqueued by ``sfs-cleanup purge --manifest FILE --json`` (no
   ``--wait``, and no worker running, so every job stays queued) against a private Redis. We
   measure the wall time of that process (start-up included), its peak RSS (``wait4``'s
   ``ru_maxrss``), its CPU time, and Redis: ``used_memory`` before and after, and ``MEMORY
   USAGE`` of the plan (hash, open set, touch hash, run hash) and of the ``sfs.delete`` queue.
2. **Live listing**: the same through the API: the fake (a subprocess, no latency, started
   from a seed file) serves 100 shares x 10,000 tasks, and ``purge`` lists them all.
3. **A finished run**: 100,000 tasks deleted by 2 workers against the fake (no latency, token
   auth), then Redis's memory for the whole run: plan, outcomes, attempts and counters.

Targets (issue 10): the scheduler's peak RSS flat in the inventory size and under 200 MB at
1,000,000 tasks; Redis under 30 MB per 100,000 planned tasks; planning at >= 20,000 tasks/s.
``--profile`` (and any missed speed target) adds a cProfile of one manifest plan, to show where
the time goes. Figures go to ``bench-results/scale.json`` and a table.
"""

from __future__ import annotations

import argparse
import pstats
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from sandbox.fakeapi.process import FakeApiProcess
from sandbox.fakeapi.seed import project_id_for
from sandbox.fakeapi.tasks import format_time
from sandbox.redis_server import RedisServer
from tests.benchmarks import procstat
from tests.benchmarks.ours import (
    OurConfig,
    already_gone_records,
    purge_cli,
    service_env,
    share_ids_for,
    start_workers,
)
from tests.benchmarks.results import RESULTS_DIR, ROOT, finish, new_doc, targets_table, workdir_for
from tests.support.environment import ServiceEnv, cli_args, stop_workers, token_auth

PREFIX = "bench"
QUEUE = "sfs.delete"
MB = 2**20
TARGET_RSS_MB = 200.0
TARGET_REDIS_MB_PER_100K = 30.0
TARGET_FINISHED_MB_PER_100K = 10.0  # issue 17: a finished run, attempts included
TARGET_PLAN_RATE = 20_000.0

console = Console(stderr=True)


# --- Inputs ------------------------------------------------------------------------------------------
def write_tasks(path: Path, project_id: str, shares: list[str], per_share: int, *, seed: int = 1) -> int:
    """``per_share`` finished, 30-day-old tasks per share, as JSON lines: a manifest (with its
    ``project_id``) that is also a seed file of the fake. Returns the number of lines."""
    end = format_time(datetime.now(UTC) - timedelta(days=30))
    types = ("import", "import_metadata", "preload", "export")
    total = 0
    with path.open("w", encoding="utf-8") as out:
        for s, share_id in enumerate(shares):
            head = f'{{"project_id":"{project_id}","share_id":"{share_id}","task_id":"'
            lines = [
                f'{head}{seed:04x}{s:08x}{i:020x}","status":"{"FAIL" if i % 5 == 0 else "SUCCESS"}",'
                f'"type":"{types[i % 4]}","end_time":"{end}"}}\n'
                for i in range(per_share)
            ]
            out.writelines(lines)
            total += per_share
    return total


# --- Redis memory --------------------------------------------------------------------------------------
def _usage(client: redis.Redis, keys: list[str]) -> int:
    total = 0
    for start in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 1000]:
            pipe.memory_usage(key, samples=0)
        total += sum(int(v or 0) for v in pipe.execute())
    return total


def run_memory(client: redis.Redis, run_id: str) -> dict[str, int]:
    """Bytes of each kind of key of one run (``MEMORY USAGE ... SAMPLES 0``), and of the queue."""
    base = f"{PREFIX}:run:{{{run_id}}}"
    groups: dict[str, list[str]] = {}
    for raw in client.scan_iter(match=f"{base}*", count=5000):
        key = raw.decode()
        rest = key[len(base) :]
        kind = rest.lstrip(":").split(":", 1)[0] or "run"
        groups.setdefault(kind, []).append(key)
    sizes = {kind: _usage(client, keys) for kind, keys in sorted(groups.items())}
    sizes["keys"] = sum(len(keys) for keys in groups.values())
    sizes["queue"] = _usage(client, [QUEUE]) if client.exists(QUEUE) else 0
    sizes["queue_messages"] = int(client.llen(QUEUE))
    return sizes


def other_keys(client: redis.Redis, run_id: str, top: int = 8) -> dict[str, Any]:
    """Keys that are not the run's (queues, limiter, events, Celery's): total bytes, the largest."""
    base = f"{PREFIX}:run:{{{run_id}}}"
    keys = [raw.decode() for raw in client.scan_iter(count=5000) if not raw.decode().startswith(base)]
    sizes = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key, samples=0)
        sizes.update({key: int(v or 0) for key, v in zip(chunk, pipe.execute(), strict=True)})
    largest = dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:top])
    return {"count": len(sizes), "bytes": sum(sizes.values()), "largest": largest}


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _mb(value: float) -> float:
    return round(value / MB, 2)


def _per_100k(value: float, tasks: int) -> float | None:
    return round(value / MB * 100_000 / tasks, 2) if tasks else None


# --- 1 and 2: plan and enqueue ---------------------------------------------------------------------
def plan_once(
    server: RedisServer, env: dict[str, str], args: list[str], *, label: str, expected: int, workdir: Path
) -> dict[str, Any]:
    """One ``purge`` (no --wait, no workers): wall time, peak RSS, and Redis's memory for it."""
    client = redis.Redis.from_url(server.url)
    client.flushall()
    before = used_memory(client)
    assert server.proc is not None
    meter = procstat.CpuMeter({"redis": server.proc.pid}).start()
    load_before = procstat.load_average()
    measured, report = purge_cli(env, *args, timeout_s=120 + expected / 2000, workdir=workdir)
    ended = time.time()
    redis_cpu = meter.stop()["redis"]
    if measured.returncode != 0:
        raise RuntimeError(f"{label}: purge exited {measured.returncode}:\n{measured.stderr[-3000:]}")
    after = used_memory(client)
    run_id = report["run_id"]
    sizes = run_memory(client, run_id)
    meta = {k.decode(): v.decode() for k, v in client.hgetall(f"{PREFIX}:run:{{{run_id}}}").items()}
    client.close()
    planned = int(report["selected"])
    plan_part = sum(sizes.get(kind, 0) for kind in ("run", "plan", "open", "touch"))
    plan_s = float(meta.get("planned_at", 0)) - float(meta.get("created_at", 0))
    after_startup_s = ended - float(meta.get("created_at", ended))
    result = {
        "label": label,
        "tasks": expected,
        "planned": planned,
        "batches": int(report["batches"]),
        "status": report["status"],
        "wall_s": round(measured.wall_s, 2),
        # From the run's creation (after the CLI's start-up) to the process's exit; the plan
        # phase ends at ``planned_at``, which Redis stores in whole seconds.
        "plan_enqueue_s": round(after_startup_s, 2),
        "plan_phase_s_approx": round(plan_s, 1) if plan_s > 0 else None,
        "tasks_per_s": round(planned / measured.wall_s) if measured.wall_s else None,
        "tasks_per_s_after_startup": round(planned / after_startup_s) if after_startup_s > 0 else None,
        "cpu_s": round(measured.cpu_s, 2),
        "redis_cpu_s": round(redis_cpu, 2),
        # Load-independent: tasks per CPU-second of the scheduler (its one thread's ceiling).
        "tasks_per_cpu_s": round(planned / measured.cpu_s) if measured.cpu_s else None,
        "load_before": load_before,
        "load_after": procstat.load_average(),
        "peak_rss_mb": round(measured.maxrss_kb / 1024, 1),
        "redis": {
            "used_memory_before_mb": _mb(before),
            "used_memory_after_mb": _mb(after),
            "used_memory_delta_mb": _mb(after - before),
            "plan_mb": _mb(plan_part),
            "queue_mb": _mb(sizes["queue"]),
            "queue_messages": sizes["queue_messages"],
            "keys": sizes,
        },
        "redis_mb_per_100k": {
            "used_memory_delta": _per_100k(after - before, planned),
            "plan_plus_queue": _per_100k(plan_part + sizes["queue"], planned),
            "plan": _per_100k(plan_part, planned),
            "queue": _per_100k(sizes["queue"], planned),
        },
    }
    console.print(
        f"  {label}: {planned} planned in {measured.wall_s:.1f} s ({result['tasks_per_s']}/s), "
        f"peak RSS {result['peak_rss_mb']} MB, Redis +{result['redis']['used_memory_delta_mb']} MB"
    )
    return result


def manifest_env(server: RedisServer, project_id: str) -> dict[str, str]:
    """The CLI's settings for a manifest plan: no shares (the manifest names them), no worker."""
    return ServiceEnv(
        redis_url=server.url,
        # Never called by a manifest plan with no workers; set so the settings are complete.
        endpoint="http://127.0.0.1:9",
        project_id=project_id,
        auth=token_auth("unused"),
        settings={
            "SFS_CLEANUP_KEY_PREFIX": PREFIX,
            "SFS_CLEANUP_SCHEDULE_ENABLED": "false",
            "SFS_CLEANUP_LOG_FORMAT": "json",
        },
    ).env()


def manifest_runs(server: RedisServer, sizes: list[int], shares: int, workdir: Path) -> list[dict[str, Any]]:
    project_id = project_id_for(1)
    share_ids = share_ids_for(shares, seed=11)
    results = []
    for size in sizes:
        path = workdir / f"manifest-{size}.jsonl"
        started = time.monotonic()
        count = write_tasks(path, project_id, share_ids, size // shares)
        console.print(f"  manifest of {count} tasks written in {time.monotonic() - started:.1f} s")
        result = plan_once(
            server,
            manifest_env(server, project_id),
            ["--manifest", str(path)],
            label=f"manifest {count:,}",
            expected=count,
            workdir=workdir / f"cli-manifest-{size}",
        )
        result["source"] = "manifest"
        result["manifest_mb"] = _mb(path.stat().st_size)
        results.append(result)
        path.unlink()
    return results


def live_run(server: RedisServer, shares: int, per_share: int, workdir: Path, *, profile: bool) -> dict[str, Any]:
    project_id = project_id_for(1)
    seed_file = workdir / "live-seed.jsonl"
    count = write_tasks(seed_file, project_id, share_ids_for(shares, seed=12), per_share)
    fake = FakeApiProcess(seed_file=str(seed_file), project_id=project_id, latency_ms=0.0, deleting_seconds=0.0)
    started = time.monotonic()
    fake.start(timeout=600)
    console.print(f"  fake with {count} tasks ready in {time.monotonic() - started:.1f} s")
    try:
        assert fake.proc is not None
        env = service_env(server.url, fake, OurConfig("token"), SFS_CLEANUP_KEY_PREFIX=PREFIX)
        meter = procstat.CpuMeter({"fake": fake.proc.pid}).start()
        result = plan_once(
            server,
            env,
            ["--older-than", "0s"],
            label=f"live listing {shares} x {per_share:,}",
            expected=count,
            workdir=workdir / "cli-live",
        )
        result["fake_cpu_s"] = round(meter.stop()["fake"], 2)
        if profile or (count >= 100_000 and (result["tasks_per_s"] or 0) < TARGET_PLAN_RATE):
            console.print("  profiling the live-listing plan with cProfile ...")
            client = redis.Redis.from_url(server.url)
            client.flushall()
            client.close()
            rundir = workdir / "profile-live"
            rundir.mkdir(parents=True, exist_ok=True)
            result["profile"] = profile_cli(env, ["--older-than", "0s"], label=result["label"], workdir=rundir)
    finally:
        fake.stop()
        seed_file.unlink()
    result["source"] = "live"
    result["list_pages"] = shares * (per_share // 1000 + 1)
    return result


# --- 3: a finished run -----------------------------------------------------------------------------
def finished_run(server: RedisServer, shares: int, per_share: int, workdir: Path) -> dict[str, Any]:
    """Delete ``shares x per_share`` tasks with 2 workers; Redis's memory for the finished run."""
    project_id = project_id_for(1)
    seed_file = workdir / "finished-seed.jsonl"
    count = write_tasks(seed_file, project_id, share_ids_for(shares, seed=13), per_share)
    client = redis.Redis.from_url(server.url)
    client.flushall()
    rundir = workdir / "finished"
    rundir.mkdir(parents=True, exist_ok=True)
    fake = FakeApiProcess(seed_file=str(seed_file), project_id=project_id, latency_ms=0.0, deleting_seconds=0.0)
    workers = []
    try:
        fake.start(timeout=300)
        cfg = OurConfig("token")
        env = service_env(server.url, fake, cfg, SFS_CLEANUP_KEY_PREFIX=PREFIX)
        workers = start_workers(env, cfg, rundir)
        before = used_memory(client)
        measured, report = purge_cli(
            env, "--older-than", "0s", "--wait", timeout_s=300 + count / 50, workdir=rundir / "cli"
        )
        compacted_s = wait_sealed(client, report["run_id"])
        after = used_memory(client)
        stats = fake.stats()
    finally:
        stop_workers(workers)
        fake.stop()
        seed_file.unlink()
    sizes = run_memory(client, report["run_id"])
    others = other_keys(client, report["run_id"])
    gone_records = already_gone_records(client, report["run_id"], PREFIX)
    info = client.info("memory")
    client.close()
    deleted = int(report["outcomes"].get("deleted", 0))
    gone = int(report["outcomes"].get("already_gone", 0))
    run_part = sum(v for k, v in sizes.items() if k not in ("keys", "queue", "queue_messages"))
    kinds = ("plan", "out", "att", "z", "chain", "run", "touch", "open", "rps")
    by_kind = {kind: _per_100k(sizes.get(kind, 0), count) for kind in kinds}
    result = {
        "tasks": count,
        "deleted": deleted,
        "already_gone": gone,
        "already_gone_audit": gone_records,
        "duplicate_deletes": stats["duplicate_deletes"],
        "status": report["status"],
        # Every task gone at the server and accounted for once (a lost answer ends already_gone).
        "agree": deleted + gone == count == stats["deletes_accepted"],
        "wall_s": round(measured.wall_s, 1),
        "deletions_per_s": round(deleted / measured.wall_s, 1),
        # From the CLI's exit (the run over) until its ledger is compacted and its chain sealed.
        "compacted_after_s": compacted_s,
        "redis": {
            "used_memory_delta_mb": _mb(after - before),
            "run_keys_mb": _mb(run_part),
            "keys": sizes,
            "other_keys": others,
            "lua_scripts_mb": _mb(int(info.get("used_memory_scripts", 0))),
            "clients_mb": _mb(int(info.get("mem_clients_normal", 0))),
        },
        # The run's keys once it is over (outcomes and attempts compacted, hash chain included).
        "bytes_per_100k_finished": round(run_part * 100_000 / count) if count else None,
        "redis_mb_per_100k": {
            "used_memory_delta": _per_100k(after - before, count),
            "run_keys": _per_100k(run_part, count),
            **{f"{kind}": value for kind, value in by_kind.items()},
        },
    }
    console.print(
        f"  finished run of {count}: {deleted} deleted in {measured.wall_s:.0f} s; Redis for the run "
        f"{result['redis_mb_per_100k']['run_keys']} MB per 100,000 tasks "
        f"({result['bytes_per_100k_finished']:,} bytes per 100,000 finished tasks)"
    )
    return result


def wait_sealed(client: redis.Redis, run_id: str, timeout_s: float = 600) -> float:
    """Seconds until the ended run's chain head is sealed, which its compaction precedes."""
    started = time.monotonic()
    while not client.hget(f"{PREFIX}:run:{{{run_id}}}", "chain_head"):
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"run {run_id} not compacted and sealed after {timeout_s} s")
        time.sleep(0.2)
    return round(time.monotonic() - started, 1)


# --- Profile of one plan ----------------------------------------------------------------------------
def profile_cli(env: dict[str, str], args: list[str], *, label: str, workdir: Path) -> dict[str, Any]:
    """cProfile of one ``purge`` (the scheduler is one thread): where planning's time goes."""
    stats_file = workdir / "plan.pstats"
    measured = procstat.run_measured(
        [sys.executable, "-m", "cProfile", "-o", str(stats_file), *cli_args("purge", *args, "--json")],
        env=env,
        cwd=ROOT,
        timeout_s=900,
        workdir=workdir,
    )
    if measured.returncode != 0:
        return {"label": label, "error": measured.stderr[-2000:]}
    stats = pstats.Stats(str(stats_file))
    total = stats.total_tt
    rows = [
        (tt, ct, ncalls, f"{_short(filename)}:{line}({name})")
        for (filename, line, name), (_cc, ncalls, tt, ct, _callers) in stats.stats.items()
    ]
    own = sorted(rows, reverse=True)[:20]
    cumulative = sorted(((ct, tt, n, f) for tt, ct, n, f in rows if _interesting(f)), reverse=True)[:25]
    return {
        "label": label,
        "wall_s_under_profiler": round(measured.wall_s, 2),
        "profiled_s": round(total, 2),
        "top_own_time": [
            {"function": f, "own_s": round(tt, 3), "share": round(tt / total, 3), "calls": n, "cum_s": round(ct, 3)}
            for tt, ct, n, f in own
        ],
        "top_cumulative": [
            {"function": f, "cum_s": round(ct, 3), "share": round(ct / total, 3), "calls": n}
            for ct, _tt, n, f in cumulative
        ],
    }


def profile_manifest(server: RedisServer, tasks: int, shares: int, workdir: Path) -> dict[str, Any]:
    project_id = project_id_for(1)
    path = workdir / "profile-manifest.jsonl"
    count = write_tasks(path, project_id, share_ids_for(shares, seed=14), tasks // shares)
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    rundir = workdir / "profile-manifest"
    rundir.mkdir(parents=True, exist_ok=True)
    try:
        return profile_cli(
            manifest_env(server, project_id), ["--manifest", str(path)], label=f"manifest {count:,}", workdir=rundir
        )
    finally:
        path.unlink()


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename.replace(str(ROOT) + "/", "")


def _interesting(function: str) -> bool:
    return function.startswith(("scheduler/", "worker/", "kombu/", "celery/", "redis/", "json/", "hashlib"))


# --- Output ---------------------------------------------------------------------------------------------
def render(doc: dict[str, Any]) -> None:
    out = Console(width=max(console.width, 150))
    table = Table(title="Scale: plan and enqueue (no workers), the scheduler's memory, Redis's")
    for column in (
        "inventory",
        "planned",
        "wall s",
        "tasks/s",
        "peak RSS MB",
        "CPU s",
        "tasks/CPU s",
        "load",
        "Redis +MB",
        "MB/100k: plan+queue",
        "plan",
        "queue",
    ):
        table.add_column(column, justify="left" if column == "inventory" else "right")
    for run in doc["plans"]:
        per = run["redis_mb_per_100k"]
        table.add_row(
            run["label"],
            f"{run['planned']:,}",
            f"{run['wall_s']:.1f}",
            f"{run['tasks_per_s']:,}",
            f"{run['peak_rss_mb']:.0f}",
            f"{run['cpu_s']:.1f}",
            f"{run['tasks_per_cpu_s']:,}",
            f"{run['load_before'][0]:.1f}",
            f"{run['redis']['used_memory_delta_mb']:.1f}",
            f"{per['plan_plus_queue']:.2f}",
            f"{per['plan']:.2f}",
            f"{per['queue']:.2f}",
        )
    out.print(table)
    done = doc.get("finished_run")
    if done:
        table = Table(title=f"Redis after a finished run of {done['tasks']:,} tasks (2 workers, token, 0 ms)")
        table.add_column("keys")
        table.add_column("MB per 100,000 tasks", justify="right")
        for kind, value in done["redis_mb_per_100k"].items():
            table.add_row(kind, str(value))
        table.caption = (
            f"{done['deleted']:,} deleted in {done['wall_s']} s ({done['deletions_per_s']}/s); "
            f"{done['bytes_per_100k_finished']:,} bytes per 100,000 finished tasks"
        )
        out.print(table)
    out.print(targets_table(doc["targets"]))
    live = [p["profile"] for p in doc["plans"] if p.get("profile")]
    for prof in [doc.get("profile"), *live]:
        if not prof or not prof.get("top_cumulative"):
            continue
        table = Table(title=f"Where planning's time goes: cProfile of purge, {prof['label']}")
        table.add_column("function")
        table.add_column("cumulative s", justify="right")
        table.add_column("share", justify="right")
        table.add_column("calls", justify="right")
        for row in prof["top_cumulative"][:18]:
            table.add_row(row["function"], f"{row['cum_s']:.2f}", f"{row['share']:.0%}", str(row["calls"]))
        table.caption = (
            f"{prof['profiled_s']} s profiled (cProfile slows Python code down: compare shares, not seconds)"
        )
        out.print(table)


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    plans = doc["plans"]
    result = _plan_targets(plans) if plans else []
    done = doc.get("finished_run")
    if done:
        result.append(
            {
                "name": f"finished run of {done['tasks']:,}: every task deleted, audit agrees with the server",
                "target": True,
                "measured": done["agree"] and done["status"] == "finished",
                "met": done["agree"] and done["status"] == "finished",
            }
        )
        per = done["redis_mb_per_100k"]["run_keys"]
        result.append(
            {
                "name": f"finished run: Redis <= {TARGET_FINISHED_MB_PER_100K:g} MB per 100,000 tasks (attempts too)",
                "target": TARGET_FINISHED_MB_PER_100K,
                "measured": per,
                "met": per is not None and per <= TARGET_FINISHED_MB_PER_100K,
            }
        )
    return result


def _plan_targets(plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    manifests = [p for p in plans if p["source"] == "manifest"]
    largest = max(plans, key=lambda p: p["planned"])
    smallest = min(manifests, key=lambda p: p["planned"]) if manifests else largest
    biggest_manifest = max(manifests, key=lambda p: p["planned"]) if manifests else largest
    growth = round(biggest_manifest["peak_rss_mb"] / smallest["peak_rss_mb"], 2) if smallest["peak_rss_mb"] else None
    worst_redis = max(p["redis_mb_per_100k"]["plan_plus_queue"] or 0 for p in plans)
    # A plan of 10,000 tasks is mostly the CLI's start-up (about 1.5 s of imports): judge the
    # speed on the inventories of 100,000 tasks and more (all of them, in a full run).
    judged = [p for p in plans if p["planned"] >= 100_000] or plans
    slowest = min(judged, key=lambda p: p["tasks_per_s"] or 0)
    result = [
        {
            "name": f"scheduler peak RSS < {TARGET_RSS_MB:g} MB at {largest['planned']:,} ({largest['label']})",
            "target": TARGET_RSS_MB,
            "measured": max(p["peak_rss_mb"] for p in plans),
            "met": max(p["peak_rss_mb"] for p in plans) < TARGET_RSS_MB,
        },
        {
            "name": f"peak RSS flat: {biggest_manifest['planned']:,} vs {smallest['planned']:,} tasks (ratio)",
            "target": 1.5,
            "measured": growth,
            "met": growth is not None and growth <= 1.5,
        },
        {
            "name": f"Redis (plan + queued jobs) < {TARGET_REDIS_MB_PER_100K:g} MB per 100,000 planned tasks",
            "target": TARGET_REDIS_MB_PER_100K,
            "measured": worst_redis,
            "met": worst_redis < TARGET_REDIS_MB_PER_100K,
        },
        {
            "name": f"planning >= {TARGET_PLAN_RATE:,.0f} tasks/s (slowest: {slowest['label']})",
            "target": TARGET_PLAN_RATE,
            "measured": slowest["tasks_per_s"],
            "met": (slowest["tasks_per_s"] or 0) >= TARGET_PLAN_RATE,
        },
    ]
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_scale", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10x smaller inventories, for trying things out")
    p.add_argument("--profile", action="store_true", help="also cProfile one manifest plan")
    p.add_argument("--sizes", default="100000,1000000", help="manifest sizes, comma-separated")
    p.add_argument("--shares", type=int, default=100, help="shares of the manifests and of the live listing")
    p.add_argument("--live-per-share", type=int, default=10_000, help="tasks per share in the fake (0: skip)")
    p.add_argument("--finished-tasks", type=int, default=100_000, help="tasks of the finished run (0: skip)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "scale.json")
    p.add_argument("--workdir", type=Path, default=None, help="logs and inventories (default: a new temp dir)")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        console.print(f"scale: ignoring options for other benchmarks: {' '.join(unknown)}")
    if args.quick:
        args.sizes = ",".join(str(int(s) // 10) for s in args.sizes.split(","))
        args.live_per_share //= 10
        args.finished_tasks //= 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    workdir = workdir_for(args.workdir, "scale")
    started = time.time()
    doc = new_doc(
        "scale",
        procstat.machine(),
        command="python -m tests.benchmarks.bench_scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        params={
            "quick": args.quick,
            "manifest_sizes": sizes,
            "shares": args.shares,
            "live_per_share": args.live_per_share,
            "finished_tasks": args.finished_tasks,
            "batch_size": 100,
            "redis_appendonly": False,
        },
        plans=[],
    )
    console.print(f"scale: work files in {workdir}; load average {procstat.load_average()}")
    with RedisServer() as server:
        doc["plans"] += manifest_runs(server, sizes, args.shares, workdir)
        if args.live_per_share > 0:
            doc["plans"].append(live_run(server, args.shares, args.live_per_share, workdir, profile=args.profile))
        if args.finished_tasks > 0:
            shares = max(1, min(args.shares, args.finished_tasks // 1000))
            doc["finished_run"] = finished_run(server, shares, args.finished_tasks // shares, workdir)
        doc["targets"] = targets(doc)
        slow_manifest = any(
            (p["tasks_per_s"] or 0) < TARGET_PLAN_RATE for p in doc["plans"] if p["source"] == "manifest"
        )
        if sizes and (args.profile or slow_manifest):
            console.print("  profiling one manifest plan with cProfile ...")
            doc["profile"] = profile_manifest(server, max(sizes), args.shares, workdir)
    finish(doc, args.output, started, workdir)
    render(doc)
    console.print(f"figures written to {args.output}")
    return 0 if all(t["met"] for t in doc["targets"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
