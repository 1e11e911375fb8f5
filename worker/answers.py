"""Temporary: re-exports worker.api.answers; removed at the end of the restructuring."""

from worker.api.answers import (
    AUTH_HINTS,
    TASK_NOT_FOUND,
    ApiAnswer,
    Verdict,
    classify,
    normalise_code,
    parse_error_body,
    parse_retry_after,
)

__all__ = [
    "AUTH_HINTS",
    "TASK_NOT_FOUND",
    "ApiAnswer",
    "Verdict",
    "classify",
    "normalise_code",
    "parse_error_body",
    "parse_retry_after",
]
