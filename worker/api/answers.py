"""One classifier: every API answer becomes exactly one :class:`Verdict`.

Retries, the audit, the rate limiter and metrics all act on the verdict; nothing else in the
code base looks at status codes or error codes. The table mirrors the reference's outcome
table for the SFS Turbo task API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final


class Verdict(StrEnum):
    OK = "ok"  # 2xx: a delete was accepted, a list or show answered
    GONE = "gone"  # the task does not exist: done, for a purge
    PERMANENT = "permanent"  # the request is wrong: never retried
    RETRYABLE = "retryable"  # server side or transport failure, or busy: retry with backoff
    AUTH_RENEW = "auth_renew"  # the token is invalid or expired: renew once, then retry
    FATAL = "fatal"  # credentials or configuration that cannot work: stop the run, say what to fix
    THROTTLED = "throttled"  # the gateway's throttle: slow the fleet, retry, never a failure
    SHARE_MISSING = "share_missing"  # the file system does not exist or is not visible


TASK_NOT_FOUND: Final = "SFS.TURBO.0106"
_BUSY_CODES: Final = frozenset({"SFS.TURBO.0011", "SFS.TURBO.0103", "SFS.TURBO.0037"})
_SHARE_MISSING_CODES: Final = frozenset({"SFS.TURBO.0002", "SFS.TURBO.9000"})
_TOKEN_RENEW_CODES: Final = frozenset({"APIGW.0301", "APIGW.0307"})
_THROTTLE_CODES: Final = frozenset({"APIGW.0308"})

#: What an operator should do about credentials the gateway refuses for good.
AUTH_HINTS: Final[Mapping[str, str]] = {
    "APIGW.0301": "the credentials were refused (invalid token, unknown AK or wrong SK): "
    "check SFS_CLEANUP_AUTH_TOKEN, the IAM_* login, or ACCESS_KEY/SECRET_KEY",
    "APIGW.0302": "this user may not call the SFS Turbo API: grant the IAM permission for SFS Turbo",
    "APIGW.0303": "the request date was refused: this machine's clock is more than 15 minutes off (fix NTP)",
    "APIGW.0305": "the authentication information is incorrect",
    "APIGW.0306": "access to the API is denied for these credentials",
    "APIGW.0307": "the token has expired and renewing it did not help",
    "APIGW.0101": "the API does not exist at this endpoint: check SFS_CLEANUP_API_ENDPOINT",
}


def normalise_code(code: str | None) -> str | None:
    """Older pages spell gateway codes ``APIG.xxxx``: treat them as ``APIGW.xxxx``."""
    if code and code.startswith("APIG.") and not code.startswith("APIGW."):
        return "APIGW." + code[len("APIG.") :]
    return code


def parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    """Read both error shapes: SFS Turbo's ``errCode/errMsg`` and the gateway's ``error_code/error_msg``."""
    if not body:
        return None, None
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    code = data.get("errCode", data.get("error_code"))
    msg = data.get("errMsg", data.get("error_msg"))
    return (
        normalise_code(str(code)) if code is not None else None,
        str(msg)[:500] if msg is not None else None,
    )


def classify(status: int, code: str | None) -> Verdict:
    """Turn an HTTP status and error code into a verdict (status 0: no answer, a transport error)."""
    code = normalise_code(code)
    if status == 0:
        return Verdict.RETRYABLE
    if 200 <= status < 300:
        return Verdict.OK
    if status == 429 or code in _THROTTLE_CODES:
        return Verdict.THROTTLED
    if status == 401:
        return Verdict.AUTH_RENEW if code in _TOKEN_RENEW_CODES else Verdict.FATAL
    if code == TASK_NOT_FOUND:
        return Verdict.GONE
    if code in _SHARE_MISSING_CODES:
        return Verdict.SHARE_MISSING
    if code in _BUSY_CODES:
        return Verdict.RETRYABLE
    if status == 403 and code is not None and code.startswith("APIGW."):
        return Verdict.FATAL
    if status == 404 and (code is None or code == "APIGW.0101"):
        # A gateway 404 is a wrong endpoint or path, not a missing task: no task can succeed.
        return Verdict.FATAL
    if status >= 500:
        return Verdict.RETRYABLE
    return Verdict.PERMANENT


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """What one API call came back with, already classified."""

    method: str
    path: str
    status: int  # 0 when no HTTP answer came (timeout, connection error)
    verdict: Verdict
    request_id: str | None = None
    error_code: str | None = None
    error_msg: str | None = None
    latency_ms: float = 0.0
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def describe(self) -> str:
        """One line for humans: status, code, message and request ID."""
        parts = [f"HTTP {self.status}" if self.status else "no answer"]
        if self.error_code:
            parts.append(self.error_code)
        if self.error_msg:
            parts.append(repr(self.error_msg))
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        # AUTH_RENEW reaches a person only when renewing could not help (a given token, AK/SK).
        hint = AUTH_HINTS.get(self.error_code or "") if self.verdict in (Verdict.FATAL, Verdict.AUTH_RENEW) else None
        if hint:
            parts.append(f"({hint})")
        return " ".join(parts)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (HTTP dates are not used by the gateway; they are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None
