"""Human durations such as ``7d``, ``12h``, ``90m``, ``30s`` or ``1w2d``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
# Far beyond any retention, and small enough that "now minus it" is still a date: a bigger value
# (say 1000000d) would only overflow datetime arithmetic at the first task it is compared with.
MAX_DAYS: Final = 36500


def parse_duration(text: str) -> timedelta:
    """Parse ``7d``-style durations; raise ``ValueError`` with the accepted form otherwise."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned or _PART.sub("", cleaned):
        raise ValueError(f"{text!r} is not a duration like 7d, 12h, 90m, 30s or 1w2d")
    seconds = sum(float(num) * _UNITS[unit] for num, unit in _PART.findall(cleaned))
    if not seconds <= MAX_DAYS * 86400:  # also refuses inf, from a number too long for a float
        raise ValueError(f"{text[:40]!r} is too long a duration: at most {MAX_DAYS}d (100 years)")
    return timedelta(seconds=seconds)
