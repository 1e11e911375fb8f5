"""The last guard against a secret in a bundle: every value the settings hold as a secret.

The bundle is built from the ledger and the non-secret selection settings, so no secret should
reach it; but the ledger holds text other systems wrote (API error messages, refused input
lines), and a bundle is handed outside the team. Each line is masked before it is hashed, so the
manifest describes what was actually written, and the bundle says how many values were masked.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from pydantic import SecretStr

from worker.settings import Settings

MASK = "***"
#: Shorter parts of a compound secret (``user:password``) are left alone: masking every "admin"
#: would corrupt the evidence for no protection.
_MIN_PART = 8


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold: the ``SecretStr`` fields, the AK, the Redis passwords."""
    values: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
            values.add(text)
            # A compound value (Flower's "user:pass,user2:pass2", a webhook URL's token) leaks in parts.
            values.update(part for part in re.split(r"[,:/?&=@]", text) if len(part) >= _MIN_PART)
    if settings.access_key:
        values.add(settings.access_key)
    for url in (settings.redis_url, settings.broker_url):
        if url and (password := urlsplit(url).password):
            values.add(password)
    # As a JSON string writes them too (a quote or a non-ASCII character escaped).
    values.update([json.dumps(v)[1:-1] for v in values])
    # Longest first, so a secret containing another is masked whole.
    return sorted((v for v in values if v), key=len, reverse=True)


class Redactor:
    """Masks the given secrets in text, counting how many it masked."""

    def __init__(self, secrets: list[str]) -> None:
        self._pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None
        self.masked = 0

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        clean, count = self._pattern.subn(MASK, text)
        self.masked += count
        return clean

    def finds(self, text: str) -> bool:
        """Whether the text holds a secret (not counted: the caller replaces the text whole)."""
        return self._pattern is not None and self._pattern.search(text) is not None
