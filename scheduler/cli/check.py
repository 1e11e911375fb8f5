"""Operations commands: ``check`` (the health check), ``reconcile`` and ``trigger-schemas``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from scheduler.cli.common import (
    UserError,
    actionable,
    context,
    err,
    friendly,
    out,
    print_errors,
    print_json,
    setup_cli_logging,
)
from worker.api.client import SfsTurboClient
from worker.errors import CleanupError
from worker.settings import Settings, load_settings


@dataclass
class CheckResult:
    """What ``check`` found: errors decide the exit code; warnings and what could not be checked do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0

    def fail(self, problem: CleanupError) -> None:
        self.errors.extend(problem.lines)
        self.exit_code = self.exit_code or problem.exit_code

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.errors,
            "errors": self.errors,
            "warnings": self.warnings,
            "unchecked": self.unchecked,
            **self.facts,
        }


@friendly
def check(
    quiet: Annotated[
        bool, typer.Option("--quiet", help="Print nothing but errors (the container health check).")
    ] = False,
    api: Annotated[bool, typer.Option("--api", help="Also list one page of each configured (or found) share.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was found as one JSON object.")] = False,
) -> None:
    """Check the settings and Redis, and with --api each share (the container health check).

    Settings include the schedule's cron expression and time zone. Redis should keep what it is
    given: AOF off or an eviction policy other than noeviction are warnings, and where the
    provider disables CONFIG (and INFO) the check says what it cannot see. --quiet, the health
    check: settings and that Redis answers, nothing printed but errors.
    """
    result = CheckResult()
    try:
        _run_checks(result, durability=not quiet, api=api)
    except Exception as exc:
        problem = actionable(exc)
        if problem is None:
            raise
        result.fail(problem)
    if as_json and not quiet:
        print_json(result.as_dict())
    elif not quiet:
        _print_text(result)
    if result.exit_code:
        print_errors(result.errors)
        raise typer.Exit(result.exit_code)


def _run_checks(result: CheckResult, *, durability: bool, api: bool) -> None:
    """Each check in turn, until one that the next ones need fails (an exception)."""
    from scheduler.context import Context

    settings: Settings = load_settings()  # refuses a bad SCHEDULE_CRON or SCHEDULE_TIMEZONE too
    setup_cli_logging(settings)
    result.facts["settings"] = {
        "auth_mode": settings.auth_mode,
        "schedule": {
            "enabled": settings.schedule_enabled,
            "cron": settings.schedule_cron,
            "timezone": settings.schedule_timezone,
        },
    }
    if settings.targets_file:  # a bad targets file fails the health check (one line per problem)
        from scheduler.targets import describe_targets, targets_of

        listed = targets_of(settings)
        assert listed is not None
        result.facts["targets"] = describe_targets(listed, settings)
        for name, target in result.facts["targets"].items():
            if not target["credentials_resolve"]:
                result.warnings.append(f"target {name}: {target['problem']}")
    ctx = Context(settings)
    ctx.redis.ping()
    result.facts["redis"] = {"reachable": True}
    if durability:
        from scheduler.durability import read_durability

        found = read_durability(ctx.redis)
        result.facts["redis"] |= found.as_dict()
        result.warnings += found.warnings
        result.unchecked += found.unchecked
    if api and settings.targets_file:
        _check_targets_api(result, ctx)
    elif api:
        client = ctx.client()
        result.facts["shares"] = {}
        shares = settings.share_ids
        if not shares:
            shares = _discovered(result, client, settings)
        for share_id in shares:
            answer, _ = client.list_page(share_id, offset=0, limit=1)
            if not answer.ok:
                raise UserError(f"share {share_id}: {answer.describe()}")
            result.facts["shares"][share_id] = "lists"


def _check_targets_api(result: CheckResult, ctx: Any) -> None:
    """``check --api`` with a targets file: each target lists one page of each of its shares."""
    from scheduler.targets import targets_of

    found = targets_of(ctx.settings)
    assert found is not None
    result.facts["shares"] = {}
    for target in found.targets:
        settings = target.settings(ctx.settings)
        client = ctx.client(settings, target.name)
        shares = settings.share_ids or _discovered(result, client, settings)
        for share_id in shares:
            answer, _ = client.list_page(share_id, offset=0, limit=1)
            if not answer.ok:
                raise UserError(f"target {target.name}: share {share_id}: {answer.describe()}")
            result.facts["shares"][share_id] = f"lists ({target.name})"


def _discovered(result: CheckResult, client: SfsTurboClient, settings: Settings) -> list[str]:
    """With no SHARE_IDS a run purges the shares it finds: show which, and which it skips."""
    from scheduler.inventory import discover_shares

    found = discover_shares(client, settings)
    result.facts["discovery"] = found.summary() | {
        "pattern": settings.share_name_pattern,
        "enterprise_project_id": settings.share_enterprise_project_id,
        "selected_shares": {share.share_id: share.name for share in found.selected},
        "skipped_shares": {share.share_id: share.as_dict() for share in found.skipped},
    }
    if not found.selected:
        result.warnings.append(f"no available share matches {settings.share_name_pattern!r}: a run would purge nothing")
    return found.share_ids


def _print_text(result: CheckResult) -> None:
    def say(line: str) -> None:
        out.print(line, markup=False, highlight=False, soft_wrap=True)  # one line each, for grep

    settings, redis = result.facts.get("settings"), result.facts.get("redis")
    if settings is not None:
        schedule = settings["schedule"]
        nightly = f"nightly purge {'on' if schedule['enabled'] else 'off'}: {schedule['cron']} ({schedule['timezone']})"
        say(f"settings valid; auth mode {settings['auth_mode']}; {nightly}")
    if redis is not None:
        shown = [f"{name} {redis[key]}" for name, key in _SHOWN if redis.get(key)]
        if redis.get("refused") and redis.get("read_with"):
            shown.append(f"read with {' and '.join(redis['read_with'])}: {'; '.join(redis['refused'])}")
        say("Redis reachable" + (f" ({', '.join(shown)})" if shown else ""))
    for name, target in result.facts.get("targets", {}).items():
        resolves = "credentials resolve" if target["credentials_resolve"] else "credentials do NOT resolve here"
        say(f"target {name}: {target['region']} project {target['project_id']} ({target['credentials']}): {resolves}")
    discovery = result.facts.get("discovery")
    if discovery is not None:
        say(f"shares found: {discovery['found']}; selected {discovery['selected']} by {discovery['pattern']!r}")
        for share_id, name in discovery["selected_shares"].items():
            say(f"share {share_id} ({name}): selected")
        for share_id, skipped in discovery["skipped_shares"].items():
            say(f"share {share_id} ({skipped['name']}): skipped: {skipped['reason']}")
    for share_id in result.facts.get("shares", {}):
        say(f"share {share_id}: lists")
    for line in result.warnings + result.unchecked:
        err.print(f"warning: {line}", markup=False, highlight=False)


_SHOWN = (("appendonly", "appendonly"), ("maxmemory-policy", "maxmemory_policy"))


@friendly
def reconcile(
    as_json: Annotated[bool, typer.Option("--json", help="Print {run ID: batches re-sent}.")] = False,
) -> None:
    """One reconciler pass: re-send jobs of active runs that the queue lost."""
    from scheduler.dispatch import reconcile_all

    ctx = context()
    done = reconcile_all(ctx.app, ctx.audit, ctx.settings)
    if as_json:
        print_json(done)
        return
    for run_id, resent in done.items():
        if resent:
            out.print(f"run {run_id}: re-sent {resent} batch(es)", markup=False, highlight=False)
    out.print(f"{len(done)} running run(s) reconciled; {sum(done.values())} batch(es) re-sent", highlight=False)


def trigger_schemas() -> None:
    """Print the JSON Schemas of the queue-message triggers (sfs.start_purge, sfs.delete_tasks, ...).

    The output is always one JSON object."""
    from scheduler.triggers import schemas

    print_json(schemas())
