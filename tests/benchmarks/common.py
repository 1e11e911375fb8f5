"""The benchmark harness: Redis, the fake API as a subprocess, N Celery worker processes, one purge.

Every figure comes from the fake's own counts (server-side truth): ``GET /_fake/stats`` for the
requests, the 429s and the busiest sliding second of DELETE arrivals, and ``GET /_fake/deleted``
for the arrival time of each accepted DELETE (the achieved rate). Our audit's own figures are kept next
to them for comparison only. CPU time is read from ``/proc`` for each process group the harness
started (workers, the fake, Redis) just before it is stopped.

One :class:`Harness` keeps one Redis for many runs (flushed before each); each run gets a fresh
fake (seeded with exactly the tasks it must delete, all finished and old) and fresh workers, so
no run inherits another's limiter state, queue or connections.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import redis

from sandbox.fakeapi.process import FakeApiProcess
from sandbox.fakeapi.tasks import format_time
from sandbox.fakeapi.window import RateLimiter
from sandbox.processes import WorkerProcess
from sandbox.redis_server import RedisServer
from tests.benchmarks import procstat
from tests.benchmarks.results import RESULTS_DIR, new_doc, write_json  # noqa: F401  (bench_ratelimit's import)
from tests.support.environment import ServiceEnv, inherited, run_cli, start_workers, stop_workers
from worker.ledger import Audit, TaskRecord

SHARES = 4

Kind = Literal["ours", "builtin"]


# --- What to run ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One configuration: who limits (``ours`` or Celery's ``builtin``), how many workers, R."""

    kind: Kind
    workers: int
    rate: float  # R: our SFS_CLEANUP_RATE_LIMIT, or the builtin task's rate_limit
    server_limit: float  # the fake's 429 threshold (sliding second); 0: none
    deletions: int
    burst: int = 1  # ours only: SFS_CLEANUP_RATE_BURST
    label: str = ""
    latency_ms: float = 20.0
    concurrency: int = 1  # Celery pool processes per worker instance
    batch_concurrency: int = 16  # ours only: deletes in flight inside one job
    reference: float = 0.0  # the R that ratios are taken against (default: rate)
    headroom: float | None = None  # ours only: SFS_CLEANUP_RATE_HEADROOM (None: the default)
    ramp_s: float | None = None  # ours only: SFS_CLEANUP_RATE_RAMP_S (None: the default)

    @property
    def r(self) -> float:
        return self.reference or self.rate

    @property
    def name(self) -> str:
        return self.label or f"{self.kind} w{self.workers} R{self.rate:g}"


# --- Pure measures (unit-testable) -------------------------------------------------------------
def busiest_window(stamps: Sequence[float], width: float = 1.0) -> int:
    """Most timestamps in any half-open window ``[t, t + width)`` (the maximum starts at a stamp)."""
    ordered = sorted(stamps)
    if not ordered:
        return 0
    return max(bisect_left(ordered, t + width) - i for i, t in enumerate(ordered))


def achieved_rate(stamps: Sequence[float], trim: float = 0.0) -> float:
    """Events per second between the first and the last stamp, after dropping ``trim`` of them
    at each end (``trim=0.05``: the steady part, without the start-up burst and the tail)."""
    ordered = sorted(stamps)
    cut = int(len(ordered) * trim)
    part = ordered[cut : len(ordered) - cut] if cut else ordered
    if len(part) < 2 or part[-1] <= part[0]:
        return 0.0
    return (len(part) - 1) / (part[-1] - part[0])


def would_throttle(stamps: Sequence[float], limit: float) -> int:
    """How many of these requests a server limit of ``limit`` per sliding second would refuse,
    by the fake's own admission rule (refused requests do not count against the window)."""
    if limit <= 0:
        return 0
    gate = RateLimiter()
    return sum(1 for t in sorted(stamps) if not gate.admit(t, limit))


class StallProbe:
    """How late this process wakes from 10 ms sleeps while a run goes on: CPU starvation of the box.

    Other load on the machine delays every process alike (the fake stamping arrivals, the
    workers waking for their slots), and bunches requests that were sent evenly; this measures
    that delay apart, so a run's figures can be read against the box's state at the time.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.late_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stall-probe", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            time.sleep(self.interval)
            self.late_ms.append(max(0.0, (time.perf_counter() - before - self.interval) * 1000))

    def __enter__(self) -> StallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def summary(self) -> dict[str, float]:
        late = sorted(self.late_ms)
        if not late:
            return {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {
            "samples": len(late),
            "p50_ms": round(late[len(late) // 2], 2),
            "p99_ms": round(late[min(len(late) - 1, int(len(late) * 0.99))], 2),
            "max_ms": round(late[-1], 2),
        }


def audit_send_times(redis_url: str) -> list[float]:
    """Send time of every DELETE our workers recorded: each attempt's ``t - l`` (epoch seconds)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [
            a.at - a.latency_ms / 1000
            for record in all_task_records(client)
            for a in record.attempts
            if a.op == "delete"
        ]
    finally:
        client.close()


def all_task_records(client: redis.Redis) -> Iterator[TaskRecord]:
    """Every task record of every run in this Redis, through the ledger's reader (live hashes or
    the compacted form of an ended run), whatever the key prefix."""
    for raw in client.scan_iter(match="*:run:{*}:plan", count=1000):
        key = raw.decode()
        prefix, _, rest = key.partition(":run:{")
        audit = Audit(client, prefix=prefix)
        run_id = rest.partition("}")[0]
        for batch in audit.iter_batches(run_id):
            yield from audit.task_records(batch)


# --- /proc ---------------------------------------------------------------------------------------
def session_cpu_s(session_id: int) -> float:
    """CPU seconds (user + system, with reaped children) of every live process in a session.

    The harness starts each service with ``start_new_session=True``, so a session is one worker
    (main process and pool children), the fake, or Redis.
    """
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = procstat.stat_fields(int(entry.name))
        if fields is None or int(fields[3]) != session_id:  # field 6: session
            continue
        total += sum(int(v) for v in fields[11:15])  # fields 14-17: utime stime cutime cstime
    return total / procstat.CLK_TCK


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": procstat.cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": procstat.load_average(),
    }


# --- The fake's inventory ------------------------------------------------------------------------
def write_seed(path: Path, deletions: int, shares: int = SHARES, seed: int = 1) -> None:
    """Exactly ``deletions`` finished tasks, 30 days old, over ``shares`` shares: all eligible."""
    import random
    import uuid

    rng = random.Random(seed)
    end = datetime.now(UTC) - timedelta(days=30)
    share_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(shares)]
    with path.open("w", encoding="utf-8") as out:
        for i in range(deletions):
            record = {
                "share_id": share_ids[i % shares],
                "task_id": f"{rng.getrandbits(128):032x}",
                "type": "import",
                "status": "SUCCESS",
                "src_target": "obs-link",
                "dest_target": "obs-link",
                "start_time": format_time(end - timedelta(minutes=5)),
                "end_time": format_time(end),
                "message": "task succeeded",
            }
            out.write(json.dumps(record, separators=(",", ":")) + "\n")


# --- The harness ---------------------------------------------------------------------------------
@dataclass
class Harness:
    """One Redis for all runs; a fresh fake and fresh workers per run. Use as a context manager."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sfs-bench-")))
    log: Any = None  # a callable(str) for progress lines; None: silent
    redis_server: RedisServer | None = None

    def __enter__(self) -> Harness:
        self.redis_server = RedisServer().start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.redis_server is not None:
            self.redis_server.cleanup()
            self.redis_server = None

    @property
    def redis_url(self) -> str:
        assert self.redis_server is not None, "use the harness as a context manager"
        return self.redis_server.url

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    def run(self, spec: RunSpec) -> dict[str, Any]:
        """Run one configuration end to end; return its figures (see :func:`figures`)."""
        assert self.redis_server is not None and self.redis_server.proc is not None
        client = redis.Redis.from_url(self.redis_url)
        client.flushall()
        client.close()
        rundir = self.workdir / spec.name.replace(" ", "_")
        rundir.mkdir(parents=True, exist_ok=True)
        seed_file = rundir / "seed.jsonl"
        write_seed(seed_file, spec.deletions)
        fake = FakeApiProcess(
            seed_file=str(seed_file),
            latency_ms=spec.latency_ms,
            rate_limit_rps=spec.server_limit,
            deleting_seconds=0.0,
        )
        workers: list[WorkerProcess] = []
        load_before = procstat.load_average()
        try:
            fake.start()
            env = self._env(spec, fake)
            workers = start_workers(
                [
                    WorkerProcess(
                        name=f"bench{i + 1}",
                        env=env,
                        log_path=rundir / f"worker{i + 1}.log",
                        concurrency=spec.concurrency,
                        app="worker" if spec.kind == "ours" else "tests.benchmarks.builtin_app",
                    )
                    for i in range(spec.workers)
                ],
                timeout=120,
            )
            self._say(f"{spec.name}: {spec.workers} worker(s) ready, {spec.deletions} deletions")
            assert fake.proc is not None
            sessions = {
                "workers": [w.pid for w in workers],
                "fake": [fake.proc.pid],
                "redis": [self.redis_server.proc.pid],
            }
            cpu_before = {role: sum(session_cpu_s(pid) for pid in pids) for role, pids in sessions.items()}
            fake.reset_stats()
            started = time.monotonic()
            with StallProbe() as probe:
                if spec.kind == "ours":
                    audit, cli_cpu = self._purge(spec, env)
                else:
                    audit, cli_cpu = self._builtin(spec, fake), 0.0
            wall = time.monotonic() - started
            sent = audit_send_times(self.redis_url) if spec.kind == "ours" else []
            stats = fake.stats()
            deleted = fake.deleted()
            # CPU spent during the measured part only (start-up and imports left out).
            cpu = {
                role: round(sum(session_cpu_s(pid) for pid in pids) - cpu_before[role], 2)
                for role, pids in sessions.items()
            }
            cpu["purge_cli"] = round(cli_cpu, 2)
        finally:
            stop_workers(workers)
            fake.stop()
        result = figures(spec, stats, deleted, audit)
        if sent:
            # A diagnostic from our own audit, never a headline figure: when each DELETE left
            # the worker (answer time minus latency). The fake sees these times plus network
            # and scheduling delays; the gap between the two views is the box's jitter.
            result["audit"]["sent_busiest_second"] = busiest_window(sent)
            result["audit"]["sent_steady_rps"] = round(achieved_rate(sent, trim=0.05), 2)
        result["wall_s"] = round(wall, 2)
        result["cpu_s"] = cpu
        result["stall"] = probe.summary()
        result["loadavg_before"] = load_before
        result["loadavg_after"] = procstat.load_average()
        return result

    def _env(self, spec: RunSpec, fake: FakeApiProcess) -> dict[str, str]:
        if spec.kind == "builtin":
            env = inherited()
            env.update(
                {
                    "BENCH_BROKER_URL": self.redis_url,
                    "BENCH_RATE_LIMIT": f"{spec.rate:g}",
                    "BENCH_API_ENDPOINT": fake.url,
                    "BENCH_PROJECT_ID": fake.project_id,
                    "BENCH_AUTH_TOKEN": fake.token,
                }
            )
            return env
        settings = {
            "SFS_CLEANUP_RATE_LIMIT": f"{spec.rate:g}",
            "SFS_CLEANUP_RATE_BURST": str(spec.burst),
            "SFS_CLEANUP_BATCH_CONCURRENCY": str(spec.batch_concurrency),
            "SFS_CLEANUP_SCHEDULE_ENABLED": "false",
            "SFS_CLEANUP_LOG_FORMAT": "json",
            "SFS_CLEANUP_LOG_LEVEL": "INFO",  # the harness waits for Celery's " ready." line
        }
        if spec.headroom is not None:
            settings["SFS_CLEANUP_RATE_HEADROOM"] = f"{spec.headroom:g}"
        if spec.ramp_s is not None:
            settings["SFS_CLEANUP_RATE_RAMP_S"] = f"{spec.ramp_s:g}"
        return ServiceEnv.for_fake(self.redis_url, fake, settings=settings).env()

    def _purge(self, spec: RunSpec, env: dict[str, str]) -> tuple[dict[str, Any], float]:
        """``sfs-cleanup purge --wait --json``; our audit's report, and the CLI's CPU seconds."""
        timeout = 120 + 10 * spec.deletions / spec.rate
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = run_cli(env, "purge", "--older-than", "7d", "--wait", "--json", timeout=timeout)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        try:
            report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError) as exc:
            raise RuntimeError(f"purge printed no JSON report ({done.returncode}):\n{done.stderr[-3000:]}") from exc
        report["exit_code"] = done.returncode
        return report, cpu

    def _builtin(self, spec: RunSpec, fake: FakeApiProcess) -> dict[str, Any]:
        """Send one ``bench.delete`` per task, then wait until the fake has answered them all."""
        from tests.benchmarks.builtin_app import QUEUE, TASK_NAME, make_app

        app = make_app(self.redis_url)
        tasks = [(t["share_id"], t["task_id"]) for share in fake.share_ids for t in fake.tasks(share)]
        with app.producer_or_acquire() as producer:
            for share_id, task_id in tasks:
                app.send_task(TASK_NAME, args=(share_id, task_id), queue=QUEUE, producer=producer)
        stall_s = max(30.0, 20.0 / spec.rate)
        answered, progress_at = 0, time.monotonic()
        while answered < len(tasks):
            time.sleep(0.25)
            now_answered = sum(fake.stats()["requests_by_method_status"].get("DELETE", {}).values())
            if now_answered > answered:
                answered, progress_at = now_answered, time.monotonic()
            elif time.monotonic() - progress_at > stall_s:
                raise TimeoutError(f"{spec.name}: {answered}/{len(tasks)} DELETEs answered, no progress")
        app.close()
        return {"sent_tasks": len(tasks)}


def figures(
    spec: RunSpec, stats: dict[str, Any], deleted: list[dict[str, Any]], audit: dict[str, Any]
) -> dict[str, Any]:
    """The run's figures, from the fake's counts; ratios against R; the targets checked."""
    r = spec.r
    by_status: dict[str, int] = stats["requests_by_method_status"].get("DELETE", {})
    # When each accepted DELETE reached the fake's gateway: the instants its throttle judges.
    stamps = [float(d["arrived"] if d.get("arrived") is not None else d["at"]) for d in deleted]
    delete_requests = sum(by_status.values())
    busiest_delete = int(stats["busiest_second_by_method"].get("DELETE", 0))
    achieved = achieved_rate(stamps)
    steady = achieved_rate(stamps, trim=0.05)
    server = {
        "delete_requests": delete_requests,
        "deletes_accepted": int(stats["deletes_accepted"]),
        "delete_statuses": dict(by_status),
        "answered_429": int(stats["answered_429"]),
        "requests_total": int(stats["requests_total"]),
        "busiest_second_delete": busiest_delete,
        "busiest_second_all": int(stats["busiest_second"]),
        "busiest_second_accepted": busiest_window(stamps),
        # The same after the first 2 s of deleting: the steady state, without the start of a run
        # (workers whose first requests leave late use their reserved slots together).
        "busiest_second_after_2s": busiest_window([t for t in stamps if t >= min(stamps) + 2.0]) if stamps else 0,
        "duplicate_deletes": int(stats["duplicate_deletes"]),
        "max_in_flight": int(stats["max_in_flight"]),
        "first_delete_at": min(stamps) if stamps else None,
        "last_delete_at": max(stamps) if stamps else None,
        "delete_span_s": round(max(stamps) - min(stamps), 3) if len(stamps) > 1 else 0.0,
        "achieved_rps": round(achieved, 2),
        "steady_rps": round(steady, 2),
    }
    failed = delete_requests - by_status.get("202", 0) - by_status.get("429", 0)
    if spec.kind == "ours":
        outcomes = audit.get("outcomes", {})
        failed = int(outcomes.get("failed", 0))
        ours: dict[str, Any] = {
            "status": audit.get("status"),
            "exit_code": audit.get("exit_code"),
            "selected": audit.get("selected"),
            "outcomes": outcomes,
            "attempts": audit.get("attempts"),
            "throttled": audit.get("throttled"),
            "retries": audit.get("retries"),
            "elapsed_s": audit.get("elapsed_s"),
            "rate": audit.get("rate"),
        }
    else:
        ours = {"sent_tasks": audit.get("sent_tasks")}
    # Celery's bucket has a capacity of one request: its "burst" is 1, like ours at burst 1.
    bound = spec.rate + (spec.burst if spec.kind == "ours" else 1)
    ratios = {
        "achieved_over_r": round(achieved / r, 3),
        "steady_over_r": round(steady / r, 3),
        "busiest_over_r": round(busiest_delete / r, 3),
    }
    # Targets are taken against the limit the run was given (for "ours" runs R itself).
    targets = {
        "achieved_ge_0_95_limit": steady >= 0.95 * spec.rate,
        "busiest_le_limit_plus_burst": busiest_delete <= bound,
        "zero_429": server["answered_429"] == 0,
        "zero_failed": failed == 0,
        "all_deleted": server["deletes_accepted"] == spec.deletions,
    }
    result: dict[str, Any] = {
        "name": spec.name,
        "spec": asdict(spec),
        "r": r,
        "busiest_bound": bound,
        "server": server,
        "ratios": ratios,
        "failed": failed,
        "targets": targets,
        "audit": ours,
    }
    if spec.server_limit <= 0:
        # The fake did not throttle, so its stamps are what was sent: how many of them a server
        # limit of R would have refused, by the fake's own sliding-window rule.
        result["would_429_at_r"] = would_throttle(stamps, r)
    return result


def write_results(path: Path, runs: list[dict[str, Any]], params: dict[str, Any]) -> Path:
    return write_json(path, new_doc("ratelimit", machine_facts(), params=params, runs=runs))


def deletions_for(rate: float, seconds: float, floor: int) -> int:
    """R x seconds deletions, at least ``floor``, rounded up to a multiple of the share count."""
    wanted = max(floor, math.ceil(rate * seconds))
    return math.ceil(wanted / SHARES) * SHARES
