"""Strict checks for the IDs that go into request paths.

An ID is checked before any URL is built: anything that is not a plain ID (letters, digits
and ``-``, bounded length) is refused with a reason, and nothing is sent. Percent-encoding is
not relied on, because an ID that needs encoding is already not an ID this API issues.
"""

from __future__ import annotations

import re
from typing import Final

from worker.errors import InputError

MAX_ID_LENGTH: Final = 64
_PLAIN_ID = re.compile(r"[A-Za-z0-9-]{1,64}", re.ASCII)


class InvalidIdError(InputError, ValueError):
    """An ID that may not be put into a request path."""

    def __init__(self, kind: str, value: object, reason: str) -> None:
        self.kind = kind
        self.value_repr = show_value(value)
        self.reason = reason
        super().__init__(f"invalid {kind} {self.value_repr}: {reason}")


def show_value(value: object, limit: int = 60) -> str:
    """A printable, bounded rendering of untrusted input for error messages."""
    text = ascii(value) if isinstance(value, str) else ascii(str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(value: object) -> str | None:
    """Why ``value`` is not a plain ID, or ``None`` when it is one."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if value == "":
        return "is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long (at most {MAX_ID_LENGTH})"
    if _PLAIN_ID.fullmatch(value):
        return None
    bad = next(ch for ch in value if not (ch.isascii() and (ch.isalnum() or ch == "-")))
    if bad in "/\\" or ".." in value:
        return f"contains a path character {bad!a}"
    if bad == "%":
        return "contains '%' (percent-encoded input is refused)"
    if not bad.isprintable():
        return f"contains a control character {bad!a}"
    if not bad.isascii():
        return f"contains a non-ASCII character {bad!a}"
    return f"contains {bad!a} (only letters, digits and '-' are allowed)"


def check_id(kind: str, value: object) -> str:
    """Return ``value`` if it is a plain ID, else raise :class:`InvalidIdError`."""
    reason = explain(value)
    if reason is not None:
        raise InvalidIdError(kind, value, reason)
    assert isinstance(value, str)
    return value


def check_project_id(value: object) -> str:
    return check_id("project_id", value)


def check_share_id(value: object) -> str:
    return check_id("share_id", value)


def check_task_id(value: object) -> str:
    return check_id("task_id", value)
