"""``sfs-cleanup purge``: select tasks, freeze the plan as a run, and start (or follow) it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scheduler.cli.common import UserError, context, err, finish, friendly, out, print_json, send_when_consented
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
    policy_name: Annotated[
        str | None, typer.Option(help="A named policy of SFS_CLEANUP_POLICIES_FILE (flags and --policy override it).")
    ] = None,
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
    """Select tasks, show the plan, and send it once you agree (type the number of tasks, or --yes).

    Without a terminal and without --yes, the plan is stored (held) and nothing is sent: exit 2;
    `sfs-cleanup runs apply RUN_ID` sends exactly that plan later. Exit codes: see `sfs-cleanup
    --help` (0 clean, 3 failed tasks, 4 aborted or cancelled, 2 bad usage or input, 6 unreachable).
    """
    from scheduler.policies import named_policy
    from scheduler.policy import policy_from_sources
    from scheduler.runs import follow, inventory, start_run
    from worker.ids import explain
    from worker.ledger import RunStatus, Trigger

    ctx = context()
    if run_id is not None:
        if (why := explain(run_id)) is not None:
            raise UserError(f"--run-id {run_id[:80]!r} {why}")
        if ctx.audit.run(run_id):
            raise UserError(f"--run-id {run_id!r}: a run with this ID already exists; choose another")
    chosen = policy_from_sources(
        settings=ctx.settings,
        named=named_policy(ctx.settings, policy_name) if policy_name else None,
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
    plan = start_run(
        ctx,
        chosen,
        items,
        source=source,
        dry_run=dry_run,
        trigger=Trigger.CLI,
        run_id=run_id,
        policy_file=policy,
        hold=None if dry_run else "consent",
    )
    if not as_json:
        render_plan_summary(plan.as_dict(), err)
    if plan.status is RunStatus.HELD:
        send_when_consented(ctx, plan, yes, "this purge")
    if not as_json:
        state = "dry run, nothing sent" if dry_run else str(ctx.audit.status(plan.run_id) or plan.status.value)
        err.print(f"run [bold]{plan.run_id}[/bold]: {state}, {plan.selected} selected")
    if not (wait or dry_run):
        if as_json:
            print_json(run_report(ctx.audit, plan.run_id))
        else:
            out.print(plan.run_id)
        return
    report = follow(ctx, plan.run_id, console=None if as_json else err)
    finish(report, as_json)
