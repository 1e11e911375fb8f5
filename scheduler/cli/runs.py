"""``sfs-cleanup runs``: list, show, follow, cancel and replay runs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from scheduler.cli.common import UserError, context, err, finish, friendly, out, print_json, require_consent
from scheduler.report import render_report, run_report

runs_app = typer.Typer(help="List, show, follow, cancel and replay runs.", no_args_is_help=True)


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
        print_json(rows)
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
        print_json(report)
    else:
        render_report(report, out)


@runs_app.command("cancel")
@friendly
def runs_cancel(run_id: str, reason: Annotated[str, typer.Option(help="Why, for the report.")] = "") -> None:
    """Stop a run: tasks not yet deleted end as aborted."""
    from worker.ledger import RunStatus

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
    yes: Annotated[bool, typer.Option("--yes", help="Confirm the deletion without being asked (scripts).")] = False,
) -> None:
    """Retry a run's failed tasks as a new run linked to the old one."""
    from scheduler.policy import policy_from_sources
    from scheduler.runs import follow, replay_items, start_run

    ctx = context()
    if not ctx.audit.run(run_id):
        raise UserError(f"no run {run_id!r}")
    require_consent(yes, "this replay")
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
    finish(follow(ctx, plan.run_id, console=None if as_json else err), as_json)
