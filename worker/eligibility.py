"""The run's policy as the worker applies it at delete time, to a task it has just shown.

Tasks planned without their status and end time (bare manifest entries, explicit lists from
triggers, replays) and every task under ``RECHECK_STATUS`` are shown just before their DELETE.
The answer must pass the run's *whole* rule set (finished status, type, share, age), not only
"finished": a bare manifest entry younger than the policy must not go just because the manifest
named it. The rules come from the run's stored policy; the age cut-off is taken at planning time
(``created_at - older_than``), the same one the planner applied to full entries, so every entry of
a run meets one cut-off.

Holds (protection lists) are not judged here: they are read live inside the write-ahead gate
(see :mod:`worker.ledger_gate`), in the same Redis step that records the DELETE as about to leave.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.durations import parse_duration
from worker.models import FINISHED_STATUSES, TaskInfo

_FINISHED = frozenset(s.value for s in FINISHED_STATUSES)


class EligibilityError(ValueError):
    """The run's stored policy cannot be read: the worker sends nothing for it."""


@dataclass(frozen=True, slots=True)
class Eligibility:
    statuses: frozenset[str]
    types: frozenset[str]  # empty: any type
    shares: frozenset[str]  # empty: any share
    # A task must have ended at or before this; None (``older_than`` 0) judges no age at all, so
    # a manifest that says "regardless of age" deletes a finished task whose end time is unknown.
    end_before: datetime | None

    @classmethod
    def from_run(cls, meta: dict[str, str]) -> Eligibility:
        """The rules of a run from its metadata (``policy`` JSON and ``created_at``).

        Anything missing or unreadable raises :class:`EligibilityError`: a check that cannot be
        made is a check that failed, and the task is not deleted.
        """
        try:
            policy = json.loads(meta["policy"])
            created = datetime.fromtimestamp(float(meta["created_at"]), UTC)
            older_than = parse_duration(str(policy.get("older_than", "7d")))
            statuses = frozenset(str(s) for s in policy.get("statuses") or ()) & _FINISHED
            return cls(
                statuses=statuses,
                types=frozenset(str(t) for t in policy.get("types") or ()),
                shares=frozenset(str(s) for s in policy.get("shares") or ()),
                end_before=created - older_than if older_than.total_seconds() > 0 else None,
            )
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise EligibilityError(f"the run's policy cannot be read: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def any_finished(cls) -> Eligibility:
        """Finished, of any type and age: ``--older-than 0`` as rules (for tests and tools)."""
        return cls(_FINISHED, frozenset(), frozenset(), None)

    def refuse(self, task: TaskInfo) -> str | None:
        """Why the shown task may not be deleted now, or ``None`` if it passes every rule.

        The reasons use the planner's vocabulary (``status:DOING``, ``too_young``...).
        """
        if task.status not in self.statuses:
            return f"status:{task.status or 'unknown'}"
        if self.types and task.type not in self.types:
            return f"type:{task.type or 'unknown'}"
        if self.shares and task.share_id not in self.shares:
            return "share_not_in_policy"
        if self.end_before is None:
            return None
        if task.end_time is None:
            return "end_time_unknown"
        ended = task.end_time if task.end_time.tzinfo else task.end_time.replace(tzinfo=UTC)
        if ended > self.end_before:
            return "too_young"
        return None
