"""Operations commands: ``check`` (the health check), ``reconcile`` and ``trigger-schemas``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from scheduler.cli.common import UserError, context, err, friendly, out, print_json
from scheduler.context import Context
from worker.settings import Settings, load_settings


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


@friendly
def reconcile() -> None:
    """One reconciler pass: re-send jobs of active runs that the queue lost."""
    from scheduler.dispatch import reconcile_all

    ctx = context()
    done = reconcile_all(ctx.app, ctx.audit, ctx.settings)
    out.print(json.dumps(done))


def trigger_schemas() -> None:
    """Print the JSON Schemas of the queue-message triggers (sfs.start_purge, sfs.delete_tasks, ...)."""
    from scheduler.triggers import schemas

    print_json(schemas())
