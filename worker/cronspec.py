"""Cron expressions and time zones of the schedule, checked where the settings are read.

Beat builds its schedule with the same parser (``scheduler.cron``), so an expression the settings
accept is one beat runs, and a bad one stops every process at start with a line naming the
setting, instead of beat failing later (or, worse, firing at a time nobody meant).
"""

from __future__ import annotations

import difflib
import re
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from celery.schedules import ParseException, crontab

# One comma-separated item: *, N or N-M, optionally /STEP. Celery's own parser is lenient (it reads
# "1-2-3" as 1-2, and month names in the minute field): this grammar refuses what cron refuses.
_NUMBER = r"[0-9]+"
_NAME_OR_NUMBER = r"(?:[0-9]+|[A-Za-z]{3})"


def _field(value: str) -> re.Pattern[str]:
    item = rf"(?:\*|{value}(?:-{value})?)(?:/[0-9]+)?"
    return re.compile(rf"{item}(?:,{item})*")


#: (crontab argument, what a user calls it, its grammar), in the order of the five fields.
_FIELDS: Final = (
    ("minute", "minute", _field(_NUMBER)),
    ("hour", "hour", _field(_NUMBER)),
    ("day_of_month", "day of month", _field(_NUMBER)),
    ("month_of_year", "month", _field(_NAME_OR_NUMBER)),
    ("day_of_week", "day of week", _field(_NAME_OR_NUMBER)),
)


def parse_cron(expression: str) -> crontab:
    """The crontab of a 5-field cron expression; :class:`ValueError` says which field is wrong."""
    shown = f"cron {expression[:80]!r}"
    parts = expression.split()
    if len(parts) != len(_FIELDS):
        raise ValueError(f"{shown}: want 5 fields: minute hour day month weekday")
    for (argument, label, grammar), part in zip(_FIELDS, parts, strict=True):
        if not grammar.fullmatch(part):
            raise ValueError(f"{shown}: {label} {part[:40]!r} is not a cron field (*, N, N-M, /STEP, commas)")
        try:
            crontab(**{argument: part})
        except (ValueError, ParseException) as exc:  # ParseException is not a ValueError
            raise ValueError(f"{shown}: {label} {part!r}: {exc}") from None
    try:
        # Each field is valid alone; together they may still name no date (day 31 of February).
        return crontab(**{argument: part for (argument, _, _), part in zip(_FIELDS, parts, strict=True)})
    except (ValueError, ParseException) as exc:
        raise ValueError(f"{shown}: {exc}") from None


def check_timezone(name: str) -> str:
    """``name`` if it is a time zone this machine knows, else :class:`ValueError` (with the
    closest known name when there is one: "Europe/Berln")."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory such as "Europe/"
        known = {zone.lower(): zone for zone in available_timezones()}
        close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.8)  # "utc" is UTC
        hint = f"; did you mean {known[close[0]]}?" if close else ""
        raise ValueError(f"unknown time zone {name[:60]!r} (an IANA name such as Europe/Berlin){hint}") from None
    return name
