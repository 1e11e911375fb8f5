"""How long a run's keys stay in Redis once it is over, by kind of run.

Compliance keeps what went wrong longer than what went well, and a dry run (nothing deleted) is
worth days, not months: a clean finished run, a run with failures (failed tasks, aborted or
cancelled), and a dry run each have their own retention.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DAY_S = 86400


@dataclass(frozen=True, slots=True)
class Retention:
    finished_s: int = 90 * DAY_S  # finished, no failed task
    with_failures_s: int = 180 * DAY_S  # failed tasks, aborted or cancelled
    dry_run_s: int = 7 * DAY_S
    # With an archive target, an ended run's keys get their EXPIRE only once its evidence bundle
    # is archived (scheduler.archive): nothing expires unarchived.
    archive_first: bool = False

    @classmethod
    def uniform(cls, seconds: int) -> Retention:
        return cls(seconds, seconds, seconds)

    @classmethod
    def days(cls, finished: int, with_failures: int, dry_run: int, *, archive_first: bool = False) -> Retention:
        return cls(finished * DAY_S, with_failures * DAY_S, dry_run * DAY_S, archive_first)

    @property
    def longest_s(self) -> int:
        return max(self.finished_s, self.with_failures_s, self.dry_run_s)

    def for_run(self, meta: Mapping[str, str]) -> int:
        """The retention of an ended run, from its hash (status, dry-run flag, failed count)."""
        if meta.get("dry_run") == "1":
            return self.dry_run_s
        if meta.get("status") == "finished" and int(meta.get("n:failed") or 0) == 0:
            return self.finished_s
        return self.with_failures_s
