"""``sfs-cleanup``: plan and start purges, follow runs, read the audit, run the fake API and the demo."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from scheduler.context import Context
from scheduler.report import EXIT_OK, exit_code, render_plan_summary, render_report, run_report
from worker.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="sfs-cleanup",
    help="Purge finished SFS Turbo HPC-cache tasks safely, with a fleet-wide rate limit and an audit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
runs_app = typer.Typer(help="List, show, follow, cancel and replay runs.", no_args_is_help=True)
audit_app = typer.Typer(help="Read the audit: one task's history, or a run's completion report.", no_args_is_help=True)
protect_app = typer.Typer(help="Live protection lists, checked just before every delete.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(audit_app, name="audit")
app.add_typer(protect_app, name="protect")

out = Console()
err = Console(stderr=True, soft_wrap=True)  # one line per problem, for logs and grep
F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2


class UserError(Exception):
    """A problem the user can fix; printed as one line, no stack trace."""


def friendly(func: F) -> F:
    """Turn the errors a user can fix into ``error: ...`` lines and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        from scheduler.inventory import ManifestError
        from scheduler.policy import PolicyError
        from worker.client import ApiError
        from worker.ids import InvalidIdError

        try:
            return func(*args, **kwargs)
        except SettingsError as exc:
            for line in exc.lines:
                err.print(f"error: {line}", markup=False, highlight=False)
        except PolicyError as exc:
            for line in exc.lines:
                err.print(f"error: {line}", markup=False, highlight=False)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            err.print(
                f"error: Redis is unreachable ({exc}); check SFS_CLEANUP_REDIS_URL and that Redis is running",
                markup=False,
                highlight=False,
            )
        except (ManifestError, InvalidIdError, UserError, ApiError) as exc:
            err.print(f"error: {exc}", markup=False, highlight=False)
        except Exception as exc:
            from worker.auth import AuthError

            if not isinstance(exc, AuthError):
                raise
            err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(EXIT_USAGE)

    return wrapper  # type: ignore[return-value]


def context() -> Context:
    from worker.logging import setup_process_logging

    settings = load_settings()
    setup_process_logging(settings)  # logs to stderr: stdout stays for reports and --json
    return Context(settings)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=None, default=str) + "\n")


# --- purge ---------------------------------------------------------------------------------------
@app.command()
@friendly
def purge(
    older_than: Annotated[str | None, typer.Option(help="Only tasks that ended longer ago, e.g. 7d, 12h.")] = None,
    status: Annotated[list[str] | None, typer.Option(help="Task status to select (repeat). SUCCESS, FAIL.")] = None,
    type: Annotated[list[str] | None, typer.Option(help="Task type to select (repeat). Default: all.")] = None,
    share: Annotated[list[str] | None, typer.Option(help="File system ID (repeat). Default: SHARE_IDS.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="JSON-lines or CSV file of tasks instead of listing.")] = None,
    max_deletions: Annotated[int | None, typer.Option(help="Cap on deletions in this run.")] = None,
    policy: Annotated[Path | None, typer.Option(help="A YAML or TOML policy file.")] = None,
    protect_task: Annotated[list[str] | None, typer.Option(help="Task ID never to delete (repeat).")] = None,
    protect_share: Annotated[list[str] | None, typer.Option(help="Share ID never to touch (repeat).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Record what would be deleted; send no DELETE.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run to its end, then print the report.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final report as one JSON object.")] = False,
    run_id: Annotated[
        str | None, typer.Option(help="Use this run ID (letters, digits, '-'; not an existing run's).")
    ] = None,
) -> None:
    """Select tasks, freeze the plan as a new run, and enqueue its deletion jobs.

    Exit codes: 0 the run finished with no failed task (or was started, without --wait);
    3 it finished with failed tasks; 4 it was aborted or cancelled; 2 bad settings or input.
    """
    from scheduler.policy import policy_from_sources
    from scheduler.runs import follow, inventory, start_run
    from worker.ids import explain

    ctx = context()
    if run_id is not None:
        if (why := explain(run_id)) is not None:
            raise UserError(f"--run-id {run_id[:80]!r} {why}")
        if ctx.audit.run(run_id):
            raise UserError(f"--run-id {run_id!r}: a run with this ID already exists; choose another")
    chosen = policy_from_sources(
        settings=ctx.settings,
        file=policy,
        overrides={
            "older_than": older_than,
            "statuses": status or None,
            "types": type or None,
            "shares": share or None,
            "max_deletions": max_deletions,
            "protected_task_ids": protect_task or None,
            "protected_share_ids": protect_share or None,
        },
    )
    if manifest is not None and not manifest.is_file():
        raise UserError(f"manifest {manifest} does not exist or is not a file")
    items, source = inventory(ctx, chosen, manifest)
    plan = start_run(ctx, chosen, items, source=source, dry_run=dry_run, trigger="cli", run_id=run_id)
    if not as_json:
        render_plan_summary(plan.as_dict(), err)
        err.print(f"run [bold]{plan.run_id}[/bold]: {plan.status.value}, {plan.selected} selected")
    if not (wait or dry_run):
        if as_json:
            _print_json(run_report(ctx.audit, plan.run_id))
        else:
            out.print(plan.run_id)
        return
    report = follow(ctx, plan.run_id, console=None if as_json else err)
    _finish(report, as_json)


def _finish(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(report)
    else:
        render_report(report, out)
    code = exit_code(report)
    if code != EXIT_OK:
        raise typer.Exit(code)


# --- runs ----------------------------------------------------------------------------------------
@runs_app.command("list")
@friendly
def runs_list(
    limit: Annotated[int, typer.Option(help="How many recent runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent runs, newest first."""
    ctx = context()
    rows = []
    for meta in ctx.audit.list_runs(limit):
        report = run_report(ctx.audit, meta["run_id"])
        rows.append(report)
    if as_json:
        _print_json(rows)
        return
    table = Table("run", "status", "trigger", "dry", "selected", "deleted", "gone", "failed", "created")
    for r in rows:
        o = r["outcomes"]
        table.add_row(
            r["run_id"],
            r["status"],
            r["trigger"] or "",
            "yes" if r["dry_run"] else "",
            str(r["selected"]),
            str(o["deleted"]),
            str(o["already_gone"]),
            str(o["failed"]),
            r["created_at"] or "",
        )
    out.print(table)


@runs_app.command("show")
@friendly
def runs_show(
    run_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run to its end first.")] = False,
) -> None:
    """A run's report: outcomes, retries, 429s and its request-rate record."""
    from scheduler.runs import follow

    ctx = context()
    if not ctx.audit.run(run_id):
        raise UserError(f"no run {run_id!r}")
    report = follow(ctx, run_id, console=None if as_json else err) if wait else run_report(ctx.audit, run_id)
    if as_json:
        _print_json(report)
    else:
        render_report(report, out)


@runs_app.command("cancel")
@friendly
def runs_cancel(run_id: str, reason: Annotated[str, typer.Option(help="Why, for the report.")] = "") -> None:
    """Stop a run: tasks not yet deleted end as aborted."""
    from worker.audit import RunStatus

    ctx = context()
    if not ctx.audit.run(run_id):
        raise UserError(f"no run {run_id!r}")
    why = f"cancelled by operator{': ' + reason if reason else ''}"
    if ctx.audit.request_stop(run_id, RunStatus.CANCELLED, why):
        out.print(f"run {run_id}: stopping; remaining tasks end as aborted")
    else:
        out.print(f"run {run_id} is not running ({ctx.audit.status(run_id)})")


@runs_app.command("replay")
@friendly
def runs_replay(
    run_id: str,
    include_aborted: Annotated[bool, typer.Option("--include-aborted", help="Also retry aborted tasks.")] = False,
    wait: Annotated[bool, typer.Option("--wait")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Retry a run's failed tasks as a new run linked to the old one."""
    from scheduler.policy import policy_from_sources
    from scheduler.runs import follow, replay_items, start_run

    ctx = context()
    if not ctx.audit.run(run_id):
        raise UserError(f"no run {run_id!r}")
    policy = policy_from_sources(settings=ctx.settings, file=None, overrides={"max_deletions": None})
    plan = start_run(
        ctx,
        policy,
        replay_items(ctx, run_id, include_aborted),
        source=f"replay:{run_id}",
        dry_run=False,
        trigger="replay",
        parent_run=run_id,
        explicit=True,
    )
    err.print(f"run [bold]{plan.run_id}[/bold] replays {plan.selected} task(s) of {run_id}")
    if not wait:
        out.print(plan.run_id)
        return
    _finish(follow(ctx, plan.run_id, console=None if as_json else err), as_json)


# --- audit ---------------------------------------------------------------------------------------
@audit_app.command("task")
@friendly
def audit_task(
    task_id: str,
    run: Annotated[str | None, typer.Option(help="Only this run.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every attempt on a task, with HTTP status, error code and request ID."""
    from worker.ids import check_task_id

    ctx = context()
    check_task_id(task_id)
    records = list(ctx.audit.find_task(task_id, [run] if run else None))
    if as_json:
        _print_json(
            [
                {
                    "run_id": r.run_id,
                    "share_id": r.share_id,
                    "outcome": r.final.outcome.value if r.final else "pending",
                    "reason": r.final.reason if r.final else None,
                    "attempts": [
                        {
                            "n": a.n,
                            "op": a.op,
                            "at": a.at,
                            "status": a.status,
                            "verdict": a.verdict,
                            "error_code": a.code,
                            "error_message": a.msg,
                            "request_id": a.request_id,
                            "latency_ms": a.latency_ms,
                            "worker": a.worker,
                        }
                        for a in r.attempts
                    ],
                }
                for r in records
            ]
        )
        return
    if not records:
        raise UserError(f"task {task_id} is in no recent run")
    for r in records:
        final = r.final.outcome.value if r.final else "pending"
        out.print(f"run {r.run_id}  share {r.share_id}  outcome [bold]{final}[/bold]")
        table = Table("#", "op", "time", "HTTP", "verdict", "error", "request ID", "ms", "worker")
        from datetime import UTC, datetime

        for a in r.attempts:
            table.add_row(
                str(a.n),
                a.op,
                datetime.fromtimestamp(a.at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                str(a.status or "-"),
                a.verdict,
                " ".join(x for x in (a.code, a.msg) if x),
                a.request_id or "",
                f"{a.latency_ms:.0f}",
                a.worker,
            )
        out.print(table)


@audit_app.command("export")
@friendly
def audit_export(
    run_id: str,
    format: Annotated[str, typer.Option(help="jsonl or csv.")] = "jsonl",
    output: Annotated[Path | None, typer.Option(help="Write here instead of standard output.")] = None,
) -> None:
    """A completion report: one row per selected task (and per refused input line)."""
    if format not in ("jsonl", "csv"):
        raise UserError(f"--format {format!r}: use jsonl or csv")
    ctx = context()
    meta = ctx.audit.run(run_id)
    if not meta:
        raise UserError(f"no run {run_id!r}")
    from scheduler.export import write_export

    stream = output.open("w", newline="") if output else sys.stdout
    try:
        rows = write_export(ctx.audit, run_id, meta.get("project_id", ""), stream, format)
    finally:
        if output:
            stream.close()
    if output:
        err.print(f"{rows} rows written to {output}")


# --- protection lists ------------------------------------------------------------------------------
@protect_app.command("add")
@friendly
def protect_add(
    task: Annotated[list[str] | None, typer.Option(help="Task ID (repeat).")] = None,
    share: Annotated[list[str] | None, typer.Option(help="Share ID (repeat).")] = None,
) -> None:
    """Protect tasks or shares from every run, including runs already planned."""
    from worker.ids import check_share_id, check_task_id

    ctx = context()
    tasks = [check_task_id(t) for t in task or []]
    shares = [check_share_id(s) for s in share or []]
    if tasks:
        ctx.redis.sadd(ctx.audit.keys.protected_tasks, *tasks)
    if shares:
        ctx.redis.sadd(ctx.audit.keys.protected_shares, *shares)
    ctx.audit.event("protection_added", tasks=",".join(tasks), shares=",".join(shares))
    out.print(f"protected {len(tasks)} task(s), {len(shares)} share(s)")


@protect_app.command("remove")
@friendly
def protect_remove(
    task: Annotated[list[str] | None, typer.Option(help="Task ID (repeat).")] = None,
    share: Annotated[list[str] | None, typer.Option(help="Share ID (repeat).")] = None,
) -> None:
    """Lift protection."""
    ctx = context()
    if task:
        ctx.redis.srem(ctx.audit.keys.protected_tasks, *task)
    if share:
        ctx.redis.srem(ctx.audit.keys.protected_shares, *share)
    ctx.audit.event("protection_removed", tasks=",".join(task or []), shares=",".join(share or []))


@protect_app.command("list")
@friendly
def protect_list() -> None:
    """Show the live protection lists."""
    ctx = context()
    for name, key in (("task", ctx.audit.keys.protected_tasks), ("share", ctx.audit.keys.protected_shares)):
        for member in sorted(m.decode() for m in ctx.redis.smembers(key)):
            out.print(f"{name}\t{member}")


# --- operations ----------------------------------------------------------------------------------
@app.command()
@friendly
def check(
    quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing; only the exit code.")] = False,
    api: Annotated[bool, typer.Option("--api", help="Also list one page of each configured share.")] = False,
) -> None:
    """Check the settings and that Redis answers (the container health check)."""
    settings: Settings = load_settings()
    ctx = Context(settings)
    ctx.redis.ping()
    policy = ctx.redis.config_get("maxmemory-policy").get("maxmemory-policy") if not quiet else None
    if api:
        client = ctx.client()
        for share_id in settings.share_ids:
            answer, _ = client.list_page(share_id, offset=0, limit=1)
            if not answer.ok:
                raise UserError(f"share {share_id}: {answer.describe()}")
    if not quiet:
        out.print(f"settings valid; Redis reachable (maxmemory-policy {policy}); auth mode {settings.auth_mode}")
        if policy not in (None, "noeviction"):
            err.print("warning: Redis maxmemory-policy should be noeviction, or queued jobs can be evicted")


@app.command()
@friendly
def reconcile() -> None:
    """One reconciler pass: re-send jobs of active runs that the queue lost."""
    from scheduler.dispatch import reconcile_all

    ctx = context()
    done = reconcile_all(ctx.app, ctx.audit, ctx.settings)
    out.print(json.dumps(done))


@app.command("trigger-schemas")
def trigger_schemas() -> None:
    """Print the JSON Schemas of the queue-message triggers (sfs.start_purge, sfs.delete_tasks, ...)."""
    from scheduler.triggers import schemas

    _print_json(schemas())


#: Commands other distributions add (the sandbox's ``demo`` and ``fake-api``): the product names
#: none of them, so it installs and runs without them.
COMMAND_PLUGINS = "sfs_cleanup.commands"


def _register_optional() -> None:
    from importlib.metadata import entry_points

    from scheduler.metrics import metrics

    app.command("metrics", help="Serve Prometheus metrics read from Redis (fleet-wide figures).")(metrics)
    helps = {"fake-api": "Run the local fake SFS Turbo API (tests, demos)."}
    for plugin in entry_points(group=COMMAND_PLUGINS):
        app.command(plugin.name, help=helps.get(plugin.name))(plugin.load())


_register_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
