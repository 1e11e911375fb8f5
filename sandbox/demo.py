"""``sfs-cleanup demo``: the whole system on one machine, in one command, with nothing set up.

It starts a Redis (``SFS_CLEANUP_REDIS_URL`` if set, else a private one on a free port), the
fake SFS Turbo API seeded with a few thousand tasks (some 500s, a 429 threshold), and two
Celery worker processes; runs a dry run and then the real purge; prints the report next to
the fake's own server-side counts; and stops everything it started, on Ctrl-C too.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sandbox.fakeapi.process import FakeApiProcess
from sandbox.processes import WorkerProcess
from sandbox.redis_server import RedisServer
from scheduler.context import Context
from scheduler.policy import policy_from_sources
from scheduler.report import exit_code, render_plan_summary, render_report, run_report
from scheduler.runs import follow, inventory, start_run
from worker.ledger import Trigger
from worker.settings import load_settings


def _sigterm_to_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def demo(
    tasks_per_share: Annotated[int, typer.Option(help="Tasks seeded in each share of the fake.")] = 750,
    shares: Annotated[int, typer.Option(help="Shares (file systems) in the fake.")] = 4,
    workers: Annotated[int, typer.Option(help="Celery worker processes to start.")] = 2,
    rate_limit: Annotated[float, typer.Option(help="Our fleet-wide limit, requests per second.")] = 200.0,
    server_limit: Annotated[float, typer.Option(help="The fake's 429 threshold, requests per second.")] = 220.0,
    error_ratio: Annotated[float, typer.Option(help="Share of DELETEs the fake answers 500.")] = 0.05,
    latency_ms: Annotated[float, typer.Option(help="The fake's latency per call.")] = 20.0,
    short: Annotated[bool, typer.Option("--short", help="A small, fast demo (for tests).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report and the fake's counts as JSON.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Keep everything running after the report.")] = False,
) -> None:
    """Run the whole system locally against the fake API: a dry run, then a real purge."""
    if short:
        tasks_per_share, shares = min(tasks_per_share, 150), min(shares, 3)
    console = Console(stderr=True)
    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="sfs-demo-"))
    code = 0
    try:
        with ExitStack() as stack:
            options = DemoOptions(
                tasks_per_share, shares, workers, rate_limit, server_limit, error_ratio, latency_ms, as_json, keep
            )
            code = _run(stack, console, workdir, options)
    except KeyboardInterrupt:
        console.print("\n[bold]interrupted[/bold]: everything the demo started has been stopped")
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(code)


@dataclass(frozen=True)
class DemoOptions:
    tasks_per_share: int
    shares: int
    workers: int
    rate_limit: float
    server_limit: float
    error_ratio: float
    latency_ms: float
    as_json: bool
    keep: bool


def _start_services(
    stack: ExitStack, console: Console, workdir: Path, o: DemoOptions
) -> tuple[FakeApiProcess, dict[str, Any]]:
    """Redis, the fake API and the workers; each is stopped by ``stack`` when the demo ends."""
    redis_url = os.environ.get("SFS_CLEANUP_REDIS_URL")
    if redis_url:
        console.print(f"Redis: using {redis_url} (SFS_CLEANUP_REDIS_URL)")
    else:
        server = RedisServer(appendonly=True).start()
        stack.callback(server.cleanup)
        redis_url = server.url
        console.print(f"Redis: started a private redis-server on {redis_url}")
    fake = FakeApiProcess(
        shares=o.shares,
        tasks_per_share=o.tasks_per_share,
        seed=7,
        latency_ms=o.latency_ms,
        error_ratio=o.error_ratio,
        fail_first_k=1,
        fail_first_ratio=0.05,
        rate_limit_rps=o.server_limit,
        deleting_seconds=1.0,
    ).start()
    stack.callback(fake.stop)
    console.print(
        f"Fake SFS Turbo API: {fake.url}  ({o.shares} shares x {o.tasks_per_share} tasks, "
        f"{o.error_ratio:.0%} 500s, 429 above {o.server_limit:g}/s, {o.latency_ms:g} ms latency)"
    )
    overrides: dict[str, Any] = {
        "redis_url": redis_url,
        "api_endpoint": fake.url,
        "project_id": fake.project_id,
        "share_ids": fake.share_ids,
        "auth_token": fake.token,
        "rate_limit": o.rate_limit,
        "rate_burst": 10,
        "retry_backoff_base_s": 0.5,
        "retry_backoff_max_s": 8.0,
        "key_prefix": "sfs-demo",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFS_CLEANUP_")}
    for name, value in overrides.items():
        env[f"SFS_CLEANUP_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    env.setdefault("SFS_CLEANUP_LOG_LEVEL", "INFO")  # worker logs go to files; "ready" is INFO
    started_workers = []
    for i in range(o.workers):
        worker = WorkerProcess(name=f"demo{i + 1}", env=env, log_path=workdir / f"worker{i + 1}.log", concurrency=2)
        stack.callback(worker.stop)
        started_workers.append(worker.start())
    for worker in started_workers:
        worker.wait_ready(timeout=90)
    console.print(f"Workers: {o.workers} Celery worker processes ready (logs in {workdir})")
    return fake, overrides


def _run(stack: ExitStack, console: Console, workdir: Path, o: DemoOptions) -> int:
    started = time.monotonic()
    fake, overrides = _start_services(stack, console, workdir, o)
    settings = load_settings(**overrides)
    ctx = Context(settings)
    policy = policy_from_sources(settings=settings, file=None, overrides={})
    console.rule("Dry run")
    items, source = inventory(ctx, policy, None)
    dry = start_run(ctx, policy, items, source=source, dry_run=True, trigger=Trigger.DEMO)
    render_plan_summary(dry.as_dict(), console)
    console.print(f"dry run {dry.run_id}: {dry.planned} tasks would be deleted; nothing was sent")

    console.rule("Purge")
    fake.reset_stats()
    items, source = inventory(ctx, policy, None)
    plan = start_run(ctx, policy, items, source=source, dry_run=False, trigger=Trigger.DEMO)
    report = follow(ctx, plan.run_id, console=console)
    stats = fake.stats()
    render_report(report, Console())
    agree = report["outcomes"]["deleted"] == stats["deletes_accepted"]
    _server_table(console, report, stats, agree)
    console.print(f"demo took {time.monotonic() - started:.1f} s")
    _print_next_steps(console, overrides, plan.run_id)
    if o.as_json:
        summary = {"report": report, "dry_run": run_report(ctx.audit, dry.run_id), "fake": stats, "agree": agree}
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    if o.keep:
        console.print("[bold]--keep[/bold]: everything stays up until Ctrl-C")
        while True:
            time.sleep(3600)
    code = exit_code(report)
    return code if agree else 1


def _print_next_steps(console: Console, overrides: dict[str, Any], run_id: str) -> None:
    env = f"SFS_CLEANUP_REDIS_URL={overrides['redis_url']} SFS_CLEANUP_KEY_PREFIX={overrides['key_prefix']}"
    console.print("\nWhile it runs (start it with --keep), look at the audit and the workers:")
    for line in (
        f"{env} sfs-cleanup runs show {run_id}",
        f"{env} sfs-cleanup audit export {run_id} --format csv",
        f"SFS_CLEANUP_REDIS_URL={overrides['redis_url']} celery -A worker flower --port=5555"
        "   # then open http://127.0.0.1:5555",
    ):
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def _server_table(console: Console, report: dict[str, Any], stats: dict[str, Any], agree: bool) -> None:
    table = Table(title="Checked against the fake API's own counts", title_justify="left")
    table.add_column("figure")
    table.add_column("our audit", justify="right")
    table.add_column("the server", justify="right")
    table.add_row("deleted (202 answers)", str(report["outcomes"]["deleted"]), str(stats["deletes_accepted"]))
    table.add_row("429 answers", str(report["throttled"]), str(stats.get("answered_429", "?")))
    table.add_row("API requests", str(report["rate"]["requests"]), str(stats.get("requests_total", "?")))
    table.add_row("busiest second", str(report["rate"]["busiest_second"]), str(stats.get("busiest_second", "?")))
    table.add_row("duplicate DELETEs", "", str(stats.get("duplicate_deletes", "?")))
    console.print(table)
    console.print("[green]audit and server agree[/green]" if agree else "[red]audit and server DISAGREE[/red]")
