"""Guard rails between a plan and its DELETEs: consent, the anomaly guard, and the checks that a
reviewed plan is still the plan the settings and policy would make.

A run that is not dry is frozen as ``held`` when nobody has agreed to it yet (the CLI asks after
showing the plan) or when its selection is out of line with its policy's history (the anomaly
guard, for runs nobody watches: the nightly purge and message triggers). A held run sends
nothing; ``runs apply`` / ``runs approve`` release it after :func:`plan_problems` finds nothing
changed, and the reconciler cancels one left unapproved past ``SFS_CLEANUP_APPROVAL_TIMEOUT_S``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from scheduler.planner import PlanResult
from scheduler.policy import Policy
from worker.ledger import Audit, RunMeta, RunStatus
from worker.settings import ENV_PREFIX, Settings

#: Why a run planned by ``sfs-cleanup purge`` waits: the user has not typed their consent yet.
AWAITING_CONSENT: Final = "awaiting_consent"
#: How the reconciler ends a held run nobody approved in time.
APPROVAL_TIMEOUT: Final = "approval_timeout"

#: The settings that decide what a plan selects (none of them secret). A plan applied later must
#: have been made under the same values.
SELECTION_SETTINGS: Final = (
    "project_id",
    "api_endpoint",
    "share_ids",
    "share_name_pattern",
    "share_enterprise_project_id",
    "policy_file",
    "policies_file",
    "older_than",
    "statuses",
    "types",
    "protected_task_ids",
    "protected_share_ids",
    "max_deletions",
    "recheck_status",
    "key_prefix",
)


#: Used only when no share is named (share discovery, scheduler.inventory.shares).
_DISCOVERY_SETTINGS: Final = frozenset({"share_name_pattern", "share_enterprise_project_id"})


def settings_view(settings: Settings) -> dict[str, str]:
    """The selection settings as text, by environment name (stored with each plan)."""
    view: dict[str, str] = {}
    for name in SELECTION_SETTINGS:
        if name in _DISCOVERY_SETTINGS and settings.share_ids:
            continue  # shares named: these select nothing (and a plan of before them still applies)
        value = getattr(settings, name)
        text = ",".join(value) if isinstance(value, list) else "" if value is None else str(value)
        view[ENV_PREFIX + name.upper()] = text
    return view


def policy_fingerprint(policy: Policy) -> str:
    """The same policy gives the same fingerprint: what the anomaly guard groups history by."""
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plan_meta(settings: Settings, policy: Policy, policy_file: Path | None) -> dict[str, Any]:
    """What a run stores so that it can be applied (or approved) later and checked first."""
    meta: dict[str, Any] = {
        "policy_fp": policy_fingerprint(policy),
        "settings_view": json.dumps(settings_view(settings), sort_keys=True),
    }
    if policy_file is not None:
        meta["policy_file_path"] = str(policy_file.resolve())
        meta["policy_file_sha256"] = file_digest(policy_file)
    if settings.policies_file:
        meta["policies_file_sha256"] = file_digest(Path(settings.policies_file))
    if settings.targets_file:
        meta["targets_file_sha256"] = file_digest(Path(settings.targets_file))
    return meta


def plan_problems(meta: Mapping[str, str], settings: Settings, now: float | None = None) -> list[str]:
    """Why a stored plan must not be sent now; empty when it may."""
    run_id = meta.get("run_id", "?")
    problems: list[str] = []
    now = time.time() if now is None else now
    planned_at = float(meta.get("planned_at") or meta.get("created_at") or 0)
    age = now - planned_at
    if age > settings.plan_max_age_s:
        problems.append(
            f"plan {run_id} is {age / 3600:.1f} h old, older than SFS_CLEANUP_PLAN_MAX_AGE_S "
            f"({settings.plan_max_age_s / 3600:.1f} h): plan again"
        )
    stored = meta.get("settings_view")
    if stored is None:
        problems.append(f"plan {run_id} records no settings to compare with (made by an older version): plan again")
    else:
        then, current = json.loads(stored), settings_view(settings)
        # A setting added since the plan was made counts as unset then ("").
        changed = [
            f"{k} ({then.get(k, '')!r} then, {current[k]!r} now)" for k in current if then.get(k, "") != current[k]
        ]
        if changed:
            problems.append(f"plan {run_id} was made under different settings: {'; '.join(changed)}")
    if path := meta.get("policy_file_path"):
        file = Path(path)
        if not file.is_file():
            problems.append(f"plan {run_id} was made with the policy file {path}, which is gone")
        elif file_digest(file) != meta.get("policy_file_sha256"):
            problems.append(f"plan {run_id} was made with a different policy: {path} changed since")
    if (digest := meta.get("policies_file_sha256")) and settings.policies_file:
        file = Path(settings.policies_file)
        if not file.is_file() or file_digest(file) != digest:
            problems.append(f"plan {run_id} was made with different named policies: {file} changed since")
    if meta.get("targets_file_sha256") != _targets_digest(settings):
        # Each batch names its target: its project, endpoint and credentials must be the planned ones.
        problems.append(f"plan {run_id} was made with another targets file (SFS_CLEANUP_TARGETS_FILE): plan again")
    return problems


def _targets_digest(settings: Settings) -> str | None:
    if not settings.targets_file:
        return None
    file = Path(settings.targets_file)
    return file_digest(file) if file.is_file() else "missing"


def history(audit: Audit, policy_fp: str, wanted: int, *, scan: int = 500) -> list[int]:
    """Tasks planned by the last ``wanted`` finished, real runs of the same policy (newest first)."""
    sizes: list[int] = []
    for meta in audit.list_runs(scan):
        run = RunMeta.of(meta)
        if meta.get("policy_fp") != policy_fp or run.dry_run or run.status is not RunStatus.FINISHED:
            continue
        sizes.append(int(meta.get("planned") or 0))
        if len(sizes) >= wanted:
            break
    return sizes


def anomaly_guard(
    audit: Audit, settings: Settings, policy_fp: str, *, listed: bool
) -> Callable[[PlanResult], str | None]:
    """The hold rule for runs nobody watches: a reason to hold the plan, or ``None``.

    Held when the selection is at least ``ANOMALY_MIN_TASKS`` and either more than
    ``ANOMALY_FACTOR`` times the median of the policy's last finished runs (at least 3 of them),
    or more than ``ANOMALY_MAX_FRACTION`` of the tasks listed (``listed``: the tasks came from the
    API's listing; a manifest or a message's list is all meant to go). A night selecting fewer
    than the minimum is never held: a small system's whole backlog is no anomaly worth a page.
    """
    past = history(audit, policy_fp, settings.anomaly_history)

    def judge(plan: PlanResult) -> str | None:
        n = plan.planned
        if n < max(1, settings.anomaly_min_tasks):
            return None
        if len(past) >= 3:
            median = statistics.median(past)
            if n > settings.anomaly_factor * median:
                return (
                    f"anomaly: {n} tasks selected, more than {settings.anomaly_factor:g}x the median "
                    f"{median:g} of this policy's last {len(past)} runs"
                )
        if listed and plan.seen and n > settings.anomaly_max_fraction * plan.seen:
            return (
                f"anomaly: {n} of the {plan.seen} tasks listed selected (more than {settings.anomaly_max_fraction:.0%})"
            )
        return None

    return judge
