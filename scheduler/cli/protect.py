"""``sfs-cleanup protect``: the live protection lists, checked just before every delete."""

from __future__ import annotations

from typing import Annotated

import typer

from scheduler.cli.common import context, friendly, out, print_json

protect_app = typer.Typer(help="Live protection lists, checked just before every delete.", no_args_is_help=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


@protect_app.command("add")
@friendly
def protect_add(
    task: Annotated[list[str] | None, typer.Option(help="Task ID (repeat).")] = None,
    share: Annotated[list[str] | None, typer.Option(help="Share ID (repeat).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Protect tasks or shares from every run, including runs already planned."""
    from worker.ids import check_share_id, check_task_id

    ctx = context()
    tasks = [check_task_id(t) for t in task or []]
    shares = [check_share_id(s) for s in share or []]
    added = 0
    if tasks:
        added += int(ctx.redis.sadd(ctx.audit.keys.protected_tasks, *tasks))
    if shares:
        added += int(ctx.redis.sadd(ctx.audit.keys.protected_shares, *shares))
    ctx.audit.event("protection_added", tasks=",".join(tasks), shares=",".join(shares))
    if as_json:
        print_json({"tasks": tasks, "shares": shares, "newly_protected": added})
    else:
        out.print(f"protected {len(tasks)} task(s), {len(shares)} share(s)")


@protect_app.command("remove")
@friendly
def protect_remove(
    task: Annotated[list[str] | None, typer.Option(help="Task ID (repeat).")] = None,
    share: Annotated[list[str] | None, typer.Option(help="Share ID (repeat).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Lift protection."""
    ctx = context()
    removed = {"tasks": 0, "shares": 0}
    if task:
        removed["tasks"] = int(ctx.redis.srem(ctx.audit.keys.protected_tasks, *task))
    if share:
        removed["shares"] = int(ctx.redis.srem(ctx.audit.keys.protected_shares, *share))
    ctx.audit.event("protection_removed", tasks=",".join(task or []), shares=",".join(share or []))
    if as_json:
        print_json({"tasks": task or [], "shares": share or [], "removed": removed["tasks"] + removed["shares"]})
    else:
        # Counts of what was protected and no longer is: an ID that was never protected counts 0.
        out.print(f"unprotected {removed['tasks']} task(s), {removed['shares']} share(s)")


@protect_app.command("list")
@friendly
def protect_list(as_json: JsonOption = False) -> None:
    """Show the live protection lists."""
    ctx = context()
    tasks, shares = (
        sorted(m.decode() for m in ctx.redis.smembers(key))
        for key in (ctx.audit.keys.protected_tasks, ctx.audit.keys.protected_shares)
    )
    if as_json:
        print_json({"tasks": tasks, "shares": shares})
        return
    for name, members in (("task", tasks), ("share", shares)):
        for member in members:
            out.print(f"{name}\t{member}")
