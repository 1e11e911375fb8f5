"""A run's description as types: what started it, where its tasks came from, how it runs.

The run hash in Redis stores these as strings (``trigger``, ``source``, ``dry_run`` as "1"/"0");
:class:`RunMeta` is the one place that reads them back, so no caller compares raw strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from worker.ledger.records import RunStatus


class Trigger(StrEnum):
    """What started a run."""

    CLI = "cli"  # sfs-cleanup purge
    SCHEDULE = "schedule"  # the nightly purge (beat)
    MESSAGE = "message"  # sfs.start_purge / sfs.delete_tasks from another system
    REPLAY = "replay"  # sfs-cleanup runs replay
    APPLY = "apply"  # sfs-cleanup runs apply: a reviewed dry run's plan
    DEMO = "demo"  # the local demo

    @property
    def unattended(self) -> bool:
        """Started with nobody at a terminal: the anomaly guard judges such runs."""
        return self in (Trigger.SCHEDULE, Trigger.MESSAGE)


class SourceKind(StrEnum):
    """Where a run's tasks came from."""

    LIVE = "live"  # the API's listing of shares
    MANIFEST = "manifest"  # a JSON-lines or CSV file
    MESSAGE = "message"  # the task list of an sfs.delete_tasks message
    REPLAY = "replay"  # the failed tasks of an earlier run
    PLAN = "plan"  # the selection of a reviewed plan (sfs-cleanup runs apply)


@dataclass(frozen=True, slots=True)
class Source:
    """``kind:detail``, as stored: ``live:share-a,share-b``, ``manifest:tasks.csv``, ``replay:RUN``."""

    kind: SourceKind
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.detail}"

    @classmethod
    def parse(cls, text: str) -> Source | None:
        kind, _, detail = text.partition(":")
        try:
            return cls(SourceKind(kind), detail)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class RunMeta:
    """The typed view of a run hash (only the fields code decides on)."""

    run_id: str
    status: RunStatus | None
    trigger: Trigger | None
    source: Source | None
    dry_run: bool
    parent_run: str | None
    hold_reason: str | None

    @classmethod
    def of(cls, meta: Mapping[str, str]) -> RunMeta:
        status = _member(RunStatus, meta.get("status"))
        trigger = _member(Trigger, meta.get("trigger"))
        return cls(
            run_id=meta.get("run_id", ""),
            status=status,
            trigger=trigger,
            source=Source.parse(meta.get("source", "")),
            dry_run=meta.get("dry_run") == "1",
            parent_run=meta.get("parent_run") or None,
            hold_reason=meta.get("hold_reason") or None,
        )


E = TypeVar("E", bound=StrEnum)


def _member(kind: type[E], value: str | None) -> E | None:
    """The enum member a stored string names, or ``None`` (missing, or unknown to this release)."""
    try:
        return kind(value) if value else None
    except ValueError:
        return None
