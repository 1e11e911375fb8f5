"""``sfs-cleanup runs``: list, show, follow, cancel and replay runs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from scheduler.cli.common import (
    PlanRefusedError,
    UserError,
    context,
    err,
    finish,
    friendly,
    operator,
    out,
    print_json,
    send_when_consented,
)
from scheduler.context import Context
from scheduler.report import render_report, run_report

runs_app = typer.Typer(help="List, show, follow, cancel and replay runs.", no_args_is_help=True)


@runs_app.command("list")
@friendly
def runs_list(
    limit: Annotated[int, typer.Option(help="How many recent runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent runs, newest first; with an archive target, where each one's bundle is archived
    (runs whose keys have expired are listed from the archive index)."""
    from scheduler.archive.index import ArchiveIndex, listing

    ctx = context()
    rows = listing(ArchiveIndex(ctx.redis, ctx.audit.keys), ctx.audit, limit)
    if as_json:
        print_json(rows)
        return
    table = Table("run", "status", "trigger", "dry", "selected", "deleted", "gone", "failed", "created", "archive")
    for r in rows:
        o = r["outcomes"]
        archive = r["archive"]
        where = archive["location"] if archive["state"] == "archived" else (archive["state"] or "")
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
            where + ("" if r["in_redis"] else " (keys expired)"),
        )
    out.print(table)


@runs_app.command("show")
@friendly
def runs_show(
    run_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run to its end first.")] = False,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="With --wait: give up after this many seconds (exit 5).")
    ] = None,
) -> None:
    """A run's report: outcomes, retries, 429s and its request-rate record."""
    from scheduler.runs import follow

    ctx = context()
    if not ctx.audit.run(run_id):
        raise UserError(f"no run {run_id!r}")
    if wait:
        # Exits with the run's code: 5 when --timeout passed first.
        finish(follow(ctx, run_id, console=None if as_json else err, timeout_s=timeout), as_json)
        return
    report = run_report(ctx.audit, run_id)
    if as_json:
        print_json(report)
    else:
        render_report(report, out)


@runs_app.command("cancel")
@friendly
def runs_cancel(
    run_id: str,
    reason: Annotated[str, typer.Option(help="Why, for the report.")] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {run_id, stopping, status} as one JSON object.")
    ] = False,
) -> None:
    """Stop a run: tasks not yet deleted end as aborted."""
    from worker.ledger import RunStatus

    ctx = context()
    if not ctx.audit.run(run_id):
        raise UserError(f"no run {run_id!r}")
    why = f"cancelled by operator{': ' + reason if reason else ''}"
    stopping = ctx.audit.request_stop(run_id, RunStatus.CANCELLED, why)
    status = ctx.audit.status(run_id)
    if as_json:
        print_json({"run_id": run_id, "stopping": stopping, "status": status.value if status else None})
    elif stopping:
        out.print(f"run {run_id}: stopping; remaining tasks end as aborted")
    else:
        out.print(f"run {run_id} is not running ({status})")


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
    from scheduler.runs import replay_items, start_run
    from worker.ledger import RunStatus, Source, SourceKind, Trigger

    ctx = context()
    if not ctx.audit.run(run_id):
        raise UserError(f"no run {run_id!r}")
    policy = policy_from_sources(settings=ctx.settings, file=None, overrides={"max_deletions": None})
    plan = start_run(
        ctx,
        policy,
        replay_items(ctx, run_id, include_aborted),
        source=Source(SourceKind.REPLAY, run_id),
        dry_run=False,
        trigger=Trigger.REPLAY,
        parent_run=run_id,
        explicit=True,
        hold="consent",
    )
    if plan.status is RunStatus.HELD:
        send_when_consented(ctx, plan, yes, "this replay")
    _started(ctx, plan.run_id, f"replays {plan.selected} task(s) of {run_id}", wait, as_json)


@runs_app.command("apply")
@friendly
def runs_apply(
    plan_id: Annotated[str, typer.Argument(help="A held run, or a finished dry run.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run to its end.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send exactly a reviewed plan: a held run's, or a dry run's tasks as a new run.

    Each task is still checked just before its DELETE (holds, status, age). Refused, and why, when
    the plan is older than SFS_CLEANUP_PLAN_MAX_AGE_S or was made under other settings or policy.
    """
    from scheduler.runs import apply_dry_run, release
    from worker.ledger import RunMeta, RunStatus

    ctx = context()
    meta = RunMeta.of(ctx.audit.run(plan_id))
    if meta.status is RunStatus.HELD:
        if problems := release(ctx, plan_id, by=operator(), how="apply"):
            raise PlanRefusedError(problems)
        run_id = plan_id
    elif meta.dry_run and meta.status is RunStatus.FINISHED:
        result = apply_dry_run(ctx, plan_id)
        if isinstance(result, list):
            raise PlanRefusedError(result)
        run_id = result.run_id
    elif meta.status is None:
        raise UserError(f"no run {plan_id!r}")
    else:
        why = "a dry run that did not finish" if meta.dry_run else meta.status.value
        raise UserError(f"run {plan_id} is {why}: only a held run or a finished dry run can be applied")
    _started(ctx, run_id, f"applies plan {plan_id}", wait, as_json)


@runs_app.command("approve")
@friendly
def runs_approve(
    run_id: str,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run to its end.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Let a held run go (held by the anomaly guard, or waiting for consent)."""
    from scheduler.runs import release

    ctx = context()
    if not ctx.audit.run(run_id):
        raise UserError(f"no run {run_id!r}")
    if problems := release(ctx, run_id, by=operator(), how="approve"):
        raise PlanRefusedError(problems)
    _started(ctx, run_id, "approved", wait, as_json)


def _started(ctx: Context, run_id: str, what: str, wait: bool, as_json: bool) -> None:
    from scheduler.runs import follow

    if wait:
        finish(follow(ctx, run_id, console=None if as_json else err), as_json)
        return
    if as_json:
        print_json(run_report(ctx.audit, run_id))
    else:
        err.print(f"run [bold]{run_id}[/bold] {what}: running")
        out.print(run_id)
