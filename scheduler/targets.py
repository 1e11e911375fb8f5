"""Runs over a targets file (``SFS_CLEANUP_TARGETS_FILE``): each target's shares, listed with its
own client, in one inventory; and what ``sfs-cleanup targets`` shows of a file.

The file is read and every target's credentials resolved (in this process, from its own
environment and mounts) before anything is listed: a bad file or a missing variable stops the
command with one line naming the file or target, and nothing is planned or sent. Each target's
client is built with its derived settings (:meth:`worker.targets.Target.settings`): its endpoint,
project, auth and limiter bucket (keyed by project and endpoint, at the target's rate).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from scheduler.inventory import Discovery, InventoryItem, Rejected, TargetStart, discover_shares, read_live
from scheduler.policy import Policy, PolicyError
from worker.api.answers import Verdict
from worker.api.client import ApiError, SfsTurboClient
from worker.ledger import Source, SourceKind
from worker.settings import Settings
from worker.targets import Target, TargetSet, load_targets

if TYPE_CHECKING:
    from scheduler.context import Context

PlanItem = InventoryItem | Discovery | TargetStart


def targets_of(settings: Settings) -> TargetSet | None:
    """The settings' targets file, read and checked; ``None`` without one (the one-project shorthand)."""
    return load_targets(settings.targets_file) if settings.targets_file else None


def live_items(
    client: SfsTurboClient, project_id: str, shares: Sequence[str], policy: Policy
) -> Iterator[InventoryItem]:
    """Every task of ``shares``, share by share. One share that cannot be listed (missing,
    forbidden, an outage past the retries) is recorded as refused input and does not keep the
    other shares from being purged; refused credentials stop the listing (say what to fix)."""
    for share_id in shares:
        try:
            yield from read_live(
                client, project_id, [share_id], statuses=list(policy.statuses), types=list(policy.types)
            )
        except ApiError as exc:
            if exc.answer.verdict in (Verdict.FATAL, Verdict.AUTH_RENEW):
                raise  # credentials or endpoint that no share can get past: stop, say what to fix
            yield Rejected(f"live:{share_id}", 0, f"listing failed: {exc.answer.describe()}", share_id)


def target_inventory(ctx: Context, policy: Policy, targets: TargetSet) -> tuple[Iterable[PlanItem], Source]:
    """Every target's tasks, target after target, each behind its :class:`TargetStart`."""
    if policy.shares:
        raise PolicyError(
            ["policy shares: with SFS_CLEANUP_TARGETS_FILE the shares are each target's (list them in the file)"]
        )
    # Resolved now, all of them: a missing variable or secret file stops here, before any plan.
    resolved = [(target, target.settings(ctx.settings)) for target in targets.targets]

    def items() -> Iterator[PlanItem]:
        for target, settings in resolved:
            yield TargetStart(target.name, target.project_id, target.describe())
            yield from _target_items(ctx, policy, target, settings)

    return items(), Source(SourceKind.LIVE, "targets:" + ",".join(targets.names))


def _target_items(ctx: Context, policy: Policy, target: Target, settings: Settings) -> Iterator[PlanItem]:
    client = ctx.client(settings, target.name)
    shares = list(settings.share_ids)
    if not shares:
        found = discover_shares(client, settings)
        yield found
        shares = found.share_ids
    yield from live_items(client, target.project_id, shares, policy)


def describe_targets(targets: TargetSet, settings: Settings) -> dict[str, Any]:
    """What ``targets check`` shows: each target, and whether its credentials resolve here."""
    shown: dict[str, Any] = {}
    for target in targets.targets:
        entry = target.describe()
        try:
            target.settings(settings)
            entry["credentials_resolve"] = True
        except Exception as exc:  # an AuthError naming the variable or file, never a value
            entry["credentials_resolve"] = False
            entry["problem"] = str(exc)
        shown[target.name] = entry
    return shown
