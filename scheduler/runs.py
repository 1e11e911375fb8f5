"""Starting, following, cancelling and replaying runs (shared by the CLI, triggers and the demo)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import redis
from kombu.exceptions import OperationalError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scheduler.context import Context
from scheduler.dispatch import dispatch_run, reconcile_run
from scheduler.guard import AWAITING_CONSENT, anomaly_guard, plan_meta, plan_problems
from scheduler.inventory import Discovery, InventoryItem, TargetStart, discover_shares, read_manifest
from scheduler.planner import PlanResult, plan_run
from scheduler.policy import Policy
from scheduler.report import run_report
from scheduler.targets import live_items, target_inventory, targets_of
from worker.ledger import OVER, Outcome, RunMeta, RunStatus, Source, SourceKind, Trigger, new_run_id
from worker.models import TaskInfo


def inventory(
    ctx: Context, policy: Policy, manifest: Path | None
) -> tuple[Iterable[InventoryItem | Discovery | TargetStart], Source]:
    """The manifest if one is given, else every target's shares (a targets file), else the live
    listing of the policy's (or configured) shares, else of every available share found in the
    project (share discovery)."""
    s = ctx.settings
    if manifest is not None:
        items = read_manifest(manifest, default_project_id=s.project_id, only_default_project=s.project_id is not None)
        return items, Source(SourceKind.MANIFEST, manifest.name)
    targets = targets_of(s)
    if targets is not None:
        return target_inventory(ctx, policy, targets)
    s.require_api()
    assert s.project_id is not None
    shares = list(policy.shares) or s.share_ids
    client = ctx.client()
    project_id = s.project_id
    found: Discovery | None = None
    if not shares:  # none named: every available share found (scheduler.inventory.shares)
        found = discover_shares(client, s)
        shares = found.share_ids

    def listed() -> Iterator[InventoryItem | Discovery]:
        if found is not None:
            yield found  # the planner records what was found and skipped
        yield from live_items(client, project_id, shares, policy)

    return listed(), Source(SourceKind.LIVE, ",".join(shares) if found is None else f"discovered:{','.join(shares)}")


HoldRule = Literal["consent", "anomaly"] | None


def _awaiting_consent(plan: PlanResult) -> str | None:
    return AWAITING_CONSENT


def _setting_file(ctx: Context) -> Path | None:
    return Path(ctx.settings.policy_file) if ctx.settings.policy_file else None


def start_run(
    ctx: Context,
    policy: Policy,
    items: Iterable[InventoryItem | Discovery | TargetStart],
    *,
    source: Source,
    dry_run: bool,
    trigger: Trigger,
    run_id: str | None = None,
    parent_run: str | None = None,
    explicit: bool = False,
    extra_meta: dict[str, Any] | None = None,
    policy_file: Path | None = None,
    hold: HoldRule = None,
) -> PlanResult:
    """Plan the run, freeze it, and send its jobs (none for a dry run, none for a held run).

    ``hold`` decides whether the frozen plan waits for approval: ``CONSENT`` (the CLI asks
    first), ``ANOMALY`` (the anomaly guard judges it: unattended runs), or ``None`` (it goes).
    """
    guard_meta = plan_meta(ctx.settings, policy, policy_file or _setting_file(ctx))
    hold_if: Callable[[PlanResult], str | None] | None = None
    if hold == "consent":
        hold_if = _awaiting_consent
    elif hold == "anomaly":
        listed = source.kind is SourceKind.LIVE
        hold_if = anomaly_guard(ctx.audit, ctx.settings, guard_meta["policy_fp"], listed=listed)
    plan = plan_run(
        ctx.audit,
        ctx.settings,
        policy,
        items,
        run_id=run_id or new_run_id(),
        dry_run=dry_run,
        trigger=trigger,
        source=str(source),
        parent_run=parent_run,
        explicit=explicit,
        trust_bare_entries=source.kind is SourceKind.MANIFEST,
        extra_meta=guard_meta | (extra_meta or {}),
        hold_if=hold_if,
    )
    if plan.status is RunStatus.RUNNING:
        dispatch_run(ctx.app, ctx.audit, plan.run_id)
    return plan


def release(ctx: Context, run_id: str, *, by: str, how: str) -> list[str]:
    """Send a held run's jobs once it is checked (:func:`plan_problems`); the problems otherwise.

    The release is atomic (held -> running, once), so two approvals at once dispatch once.
    """
    meta = ctx.audit.run(run_id)
    status = RunMeta.of(meta).status
    if status is not RunStatus.HELD:
        return [f"run {run_id} is {status.value if status else 'unknown'}, not held: nothing to approve"]
    if problems := plan_problems(meta, ctx.settings):
        return problems
    if not ctx.audit.release(run_id, by, how):
        return [f"run {run_id} is no longer held ({ctx.audit.status(run_id)}): approved or cancelled meanwhile"]
    dispatch_run(ctx.app, ctx.audit, run_id)
    return []


#: How long ``follow`` keeps waiting for an unreachable Redis (or broker) before giving up.
REDIS_OUTAGE_MAX_S = 300.0


def follow(
    ctx: Context, run_id: str, *, console: Console | None = None, poll_s: float = 0.5, timeout_s: float | None = None
) -> dict[str, Any]:
    """Wait for a run to end, with a progress bar, reconciling lost jobs on the way."""
    audit = ctx.audit
    report = run_report(audit, run_id)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_reconcile = time.monotonic()
    show = console is not None and not report["dry_run"]
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
        transient=False,
    ) as progress:
        bar = progress.add_task(f"run {run_id}", total=max(report["selected"], 0), detail="")
        unreachable_since: float | None = None
        while report["status"] not in OVER and report["status"] != RunStatus.HELD:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(poll_s)
            try:
                if time.monotonic() - last_reconcile >= min(30.0, ctx.settings.reconcile_after_s / 2):
                    reconcile_run(ctx.app, audit, ctx.settings, run_id)
                    last_reconcile = time.monotonic()
                report = run_report(audit, run_id)
            except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
                # Redis restarting (or failing over) is no reason to abandon the run: the workers
                # reconnect on their own, and so does this loop. Give up only after a long outage.
                now = time.monotonic()
                if unreachable_since is None:
                    unreachable_since = now
                    if console is not None:
                        console.print(f"Redis unreachable ({exc}); still following run {run_id}")
                if now - unreachable_since > REDIS_OUTAGE_MAX_S:
                    raise
                time.sleep(min(2.0, poll_s * 2))
                continue
            unreachable_since = None
            o = report["outcomes"]
            detail = (
                f"deleted {o[Outcome.DELETED]}  gone {o[Outcome.ALREADY_GONE]}  failed {o[Outcome.FAILED]}"
                f"  retries {report['retries']}  429s {report['throttled']}"
            )
            progress.update(bar, completed=sum(o.values()), detail=detail)
    return report


def replay_items(ctx: Context, run_id: str, include_aborted: bool) -> Iterator[InventoryItem | TargetStart]:
    """The tasks of a run that ended failed (and aborted, if asked), to plan again."""
    return tasks_ended(ctx, run_id, {Outcome.FAILED} | ({Outcome.ABORTED} if include_aborted else set()))


def apply_dry_run(ctx: Context, run_id: str) -> PlanResult | list[str]:
    """A new run of exactly the tasks a dry run would have deleted, under the dry run's policy;
    each is shown just before its DELETE and skipped unless still eligible (holds, status, age).
    The problems (:func:`plan_problems`) instead, if the plan is stale or made differently."""
    meta = ctx.audit.run(run_id)
    if problems := plan_problems(meta, ctx.settings):
        return problems
    policy = Policy.model_validate(json.loads(meta["policy"]))
    return start_run(
        ctx,
        policy,
        tasks_ended(ctx, run_id, {Outcome.WOULD_DELETE}),
        source=Source(SourceKind.PLAN, run_id),
        dry_run=False,
        trigger=Trigger.APPLY,
        parent_run=run_id,
        explicit=True,
    )


#: What a plan's summary counts per target, which a new run of its tasks counts afresh.
_PLAN_COUNTS = ("planned", "rejected", "discovery", "skipped_shares")


def tasks_ended(ctx: Context, run_id: str, wanted: set[Outcome]) -> Iterator[InventoryItem | TargetStart]:
    """The tasks of a run whose final outcome is one of ``wanted``; a run over a targets file's
    tasks behind their :class:`TargetStart`, so that the new run sends each to its target again."""
    meta = ctx.audit.run(run_id)
    project_id = meta.get("project_id", ctx.settings.project_id or "")
    targets = json.loads(meta.get("summary") or "{}").get("targets") or {}
    current: str | None = None
    for batch in ctx.audit.iter_batches(run_id):
        project = project_id
        if batch.target is not None:
            info = targets.get(batch.target, {})
            project = str(info.get("project_id", ""))
            if batch.target != current:
                current = batch.target
                shown = {k: v for k, v in info.items() if k not in _PLAN_COUNTS}
                yield TargetStart(batch.target, project, shown)
        for record in ctx.audit.task_records(batch):
            if record.final is not None and record.final.outcome in wanted:
                yield TaskInfo(project_id=project, share_id=record.share_id, task_id=record.task_id)
