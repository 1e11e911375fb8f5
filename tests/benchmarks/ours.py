"""Our service for one throughput run: Redis, Celery worker processes, and ``sfs-cleanup purge`` timed.

Also what the throughput and scale benchmarks share about those runs: the credentials the fake
checks, the inventories (finished, old tasks over N shares, a seed file that is also a manifest),
the settings of every process of the service for a run, and the audit of tasks that ended
``already_gone``.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from sandbox.fakeapi.process import FakeApiProcess
from sandbox.fakeapi.tasks import format_time
from sandbox.processes import WorkerProcess
from sandbox.redis_server import RedisServer
from scheduler.export import attempt_dict
from tests.benchmarks import procstat
from tests.benchmarks.results import ROOT
from tests.support import environment
from tests.support.environment import ServiceEnv, aksk_auth, cli_command, stop_workers, token_auth
from worker.ledger import Audit
from worker.settings import Settings

AK = "BENCHAKAAAAAAAAAAAAA"
SK = "bench-secret-key-not-a-secret"

console = Console(stderr=True)
#: The product's default deletes in flight per job: the benchmark measures what users get.
DEFAULT_CONCURRENCY: int = Settings.model_fields["batch_concurrency"].default


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


# --- Ours: Redis, 2 Celery workers, the CLI ------------------------------------------------------
@dataclass(frozen=True)
class OurConfig:
    auth: str = "aksk"  # or "token"
    workers: int = 2
    procs: int = 1  # Celery pool processes per worker
    concurrency: int = DEFAULT_CONCURRENCY  # SFS_CLEANUP_BATCH_CONCURRENCY
    batch_size: int = 100  # SFS_CLEANUP_BATCH_SIZE

    @property
    def label(self) -> str:
        return f"{self.auth} w{self.workers}x{self.procs} c{self.concurrency} b{self.batch_size}"


def service_env(redis_url: str, fake: FakeApiProcess, cfg: OurConfig, **extra: str) -> dict[str, str]:
    """The settings of every process of our service for one run (no rate limit to speak of)."""
    auth = aksk_auth(AK, SK) if cfg.auth == "aksk" else token_auth(fake.token)
    settings = {
        "SFS_CLEANUP_RATE_LIMIT": "100000",
        "SFS_CLEANUP_RATE_BURST": "1000",
        "SFS_CLEANUP_BATCH_SIZE": str(cfg.batch_size),
        "SFS_CLEANUP_BATCH_CONCURRENCY": str(cfg.concurrency),
        "SFS_CLEANUP_SCHEDULE_ENABLED": "false",
        "SFS_CLEANUP_KEY_PREFIX": "bench",
        "SFS_CLEANUP_LOG_FORMAT": "json",
        "SFS_CLEANUP_LOG_LEVEL": "INFO",  # the default; Celery's " ready." line is INFO too
    }
    return ServiceEnv.for_fake(redis_url, fake, auth=auth, settings=settings).env(**extra)


def start_workers(env: dict[str, str], cfg: OurConfig, logdir: Path) -> list[WorkerProcess]:
    """``cfg.workers`` Celery workers (bench1, bench2, ...) of ``cfg.procs`` pool processes each, ready."""
    workers = [
        WorkerProcess(name=f"bench{i + 1}", env=env, log_path=logdir / f"worker{i + 1}.log", concurrency=cfg.procs)
        for i in range(cfg.workers)
    ]
    return environment.start_workers(workers, timeout=120)


def purge_cli(env: dict[str, str], *args: str, timeout_s: float, workdir: Path) -> tuple[procstat.Measured, Any]:
    """``sfs-cleanup purge ARGS --json`` as a measured child; its measurement and JSON report."""
    measured = procstat.run_measured(
        cli_command("purge", *args, "--json"),
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
    audit = Audit(client, prefix=prefix)
    for batch in audit.iter_batches(run_id):
        for record in audit.task_records(batch):
            if record.final is not None and record.final.outcome.value == "already_gone" and len(found) < limit:
                found.append(
                    {
                        "task_id": record.task_id,
                        "outcome": record.final.outcome.value,
                        "attempts": [attempt_dict(a) for a in record.attempts],
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
        # The workers' CPU per deletion in units of the fake's CPU per request in the same run.
        # The fake does the same work per request whatever our code does, so a machine that runs
        # slower for a while (the same benchmark ran 20 % slower an hour later on one of ours)
        # raises both and leaves this ratio: it shows what the code costs, the seconds what the
        # machine did.
        "worker_to_fake_cpu": round(workers_cpu / cpu["fake"], 2) if cpu["fake"] else None,
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
