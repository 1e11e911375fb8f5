"""``sfs-cleanup purge``: select tasks, freeze the plan as a run, and start (or follow) it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scheduler.cli.common import UserError, context, err, finish, friendly, out, print_json, require_consent
from scheduler.report import render_plan_summary, run_report


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
    yes: Annotated[bool, typer.Option("--yes", help="Confirm the deletion without being asked (scripts).")] = False,
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
    if not dry_run:
        require_consent(yes, "this purge")
    items, source = inventory(ctx, chosen, manifest)
    plan = start_run(ctx, chosen, items, source=source, dry_run=dry_run, trigger="cli", run_id=run_id)
    if not as_json:
        render_plan_summary(plan.as_dict(), err)
        err.print(f"run [bold]{plan.run_id}[/bold]: {plan.status.value}, {plan.selected} selected")
    if not (wait or dry_run):
        if as_json:
            print_json(run_report(ctx.audit, plan.run_id))
        else:
            out.print(plan.run_id)
        return
    report = follow(ctx, plan.run_id, console=None if as_json else err)
    finish(report, as_json)
