"""``sfs-cleanup protect``: the live protection lists, checked just before every delete."""

from __future__ import annotations

from typing import Annotated

import typer

from scheduler.cli.common import context, friendly, out

protect_app = typer.Typer(help="Live protection lists, checked just before every delete.", no_args_is_help=True)


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
