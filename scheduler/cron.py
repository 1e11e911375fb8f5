"""Cron schedules and their slots: when the nightly purge (of each scheduled policy) is due.

A *slot* is one time a cron expression names. Beat may send late (a restart, a slow failover)
or twice (a manual trigger of the same slot); every such message maps to the same slot, and the
slot is what is claimed once (:func:`slot_key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from celery.schedules import crontab

from worker.cronspec import parse_cron
from worker.settings import Settings


def cron_schedule(expression: str, tz: str) -> crontab:
    """The expression's crontab: the settings' own parser, so beat runs what the settings accepted."""
    return parse_cron(expression)


@dataclass(frozen=True, slots=True)
class Schedule:
    """One nightly purge: of a named policy (``policy``), or of the settings' policy (``None``)."""

    policy: str | None
    cron: str
    timezone: str

    @property
    def entry(self) -> str:
        """Its beat entry's name."""
        return "nightly-purge" if self.policy is None else f"nightly-purge:{self.policy}"

    def slot(self, slot: str | None, now: datetime) -> datetime:
        """The slot a ``sfs.nightly_purge`` message stands for (see ``NightlyPurge``)."""
        when = now
        if slot:
            when = datetime.fromisoformat(slot)
            if when.tzinfo is None:
                when = when.replace(tzinfo=ZoneInfo(self.timezone))
        return last_slot(self.cron, self.timezone, when)

    def key(self, slot: datetime) -> str:
        return slot_key(slot, self.policy)


def last_slot(expression: str, tz: str, now: datetime) -> datetime:
    """The most recent time at or before ``now`` that the cron expression names (minute precision).

    Beat may send late (a restart, a slow failover) or twice (a manual trigger of the same slot);
    every such message maps to the same slot, and the slot is what is claimed once.
    """
    cron = cron_schedule(expression, tz)
    local = now.astimezone(ZoneInfo(tz)).replace(second=0, microsecond=0)
    for minutes in range(0, 60 * 24 * 366):
        t = local - timedelta(minutes=minutes)
        if (
            t.minute in cron.minute
            and t.hour in cron.hour
            and t.day in cron.day_of_month
            and t.month in cron.month_of_year
            and (t.isoweekday() % 7) in cron.day_of_week
        ):
            return t.astimezone(UTC)
    raise ValueError(f"cron {expression!r} names no time in the past year")


def slot_key(slot: datetime, policy: str | None = None) -> str:
    """The idempotency key of a schedule slot: ``nightly-20261129T0200Z`` (always UTC), and
    ``nightly-<policy>-20261129T0200Z`` for a named policy's schedule."""
    prefix = "nightly" if policy is None else f"nightly-{policy}"
    return f"{prefix}-{slot.astimezone(UTC):%Y%m%dT%H%MZ}"


def nightly_slot(settings: Settings, slot: str | None, now: datetime) -> datetime:
    """The slot of the settings' own schedule that a message stands for."""
    return Schedule(None, settings.schedule_cron, settings.schedule_timezone).slot(slot, now)
