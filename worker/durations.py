"""Human durations such as ``7d``, ``12h``, ``90m``, ``30s`` or ``1w2d``."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """Parse ``7d``-style durations; raise ``ValueError`` with the accepted form otherwise."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned or _PART.sub("", cleaned):
        raise ValueError(f"{text!r} is not a duration like 7d, 12h, 90m, 30s or 1w2d")
    seconds = sum(float(num) * _UNITS[unit] for num, unit in _PART.findall(cleaned))
    return timedelta(seconds=seconds)
