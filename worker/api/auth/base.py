"""What every authentication mode shares: its errors, and how a token goes on a request.

No secret (token, password, SK, security token, derived key) is put in any repr, exception
or log line.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Final

import httpx

from worker.api.answers import Verdict, classify, parse_error_body
from worker.errors import EXIT_UNAVAILABLE, UnavailableError, UsageError

NO_CREDENTIALS: Final = (
    "no credentials configured: set SFS_CLEANUP_AUTH_TOKEN, the IAM_* login, ACCESS_KEY/SECRET_KEY "
    "or METADATA_CREDENTIALS"
)
_JSON: Final = "application/json"


class AuthError(UsageError):
    """Credentials that cannot work, one line saying what to fix. Never holds a secret.

    Only plain ``str`` arguments, so that it survives pickling through Celery.
    """


class AuthUnavailableError(AuthError, UnavailableError):
    """IAM could not be asked (no answer, 5xx, 429, a login by another worker that never ended):
    a transient failure, worth retrying later, unlike a plain :class:`AuthError`."""

    exit_code = EXIT_UNAVAILABLE


def put_token(request: httpx.Request, token: str) -> None:
    """Send ``token`` as ``X-Auth-Token`` (the token and IAM modes), JSON unless said otherwise."""
    put_wire_token(request.headers, token)


def put_wire_token(headers: MutableMapping[str, str], token: str) -> None:
    """:func:`put_token` on a header mapping (httpx's, or the hand-written wire's plain dict)."""
    headers["X-Auth-Token"] = token
    headers.setdefault("Content-Type", _JSON)


def renewable(status: int, body: bytes) -> bool:
    """A 401 whose error code says the credential may be renewed (``APIGW.0301``/``0307``)."""
    if status != 401:
        return False
    code, _ = parse_error_body(body)
    return classify(401, code) is Verdict.AUTH_RENEW


class Expiring:
    """Renewal arithmetic of a credential with an issue (``iat``) and expiry (``exp``) time, shared
    by the IAM token and the platform's temporary keys: renewed when less than the smaller of
    ``renew_before_s`` and a third of its lifetime remains, so a short-lived credential is not
    renewed on every use."""

    exp: float
    iat: float

    @property
    def lifetime(self) -> float:
        return self.exp - self.iat

    def valid(self, now: float) -> bool:
        return now < self.exp

    def fresh(self, now: float, renew_before_s: float) -> bool:
        return self.exp - now >= min(renew_before_s, self.lifetime / 3)


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time from an IAM or metadata answer (naive means UTC); ``None`` if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
