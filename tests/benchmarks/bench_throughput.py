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

The parts are modules of their own: the SDK baseline in :mod:`tests.benchmarks.baseline`, our
service's runs in :mod:`tests.benchmarks.ours`, the profile in :mod:`tests.benchmarks.profiling`;
this one renders the tables, checks the targets and is the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sandbox.redis_server import RedisServer
from tests.benchmarks import procstat
from tests.benchmarks.baseline import baseline_child, run_baseline
from tests.benchmarks.ours import OurConfig, run_ours
from tests.benchmarks.profiling import profile
from tests.benchmarks.results import RESULTS_DIR, finish, new_doc, targets_table, workdir_for

TARGET_RATIO = 20.0

console = Console(stderr=True)


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
