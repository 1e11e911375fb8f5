"""The IAM password login: who logs in (:class:`IamLogin`), the call, and what it gives back.

The login asks IAM for a project-scoped token (``POST /v3/auth/tokens``). Its lifetime is
IAM's ``expires_at - issued_at`` measured from this host's clock at login, so a skewed clock
cannot make a fresh token look expired (or the reverse). A refusal becomes an
:class:`~worker.api.auth.base.AuthError` saying what to fix; no answer, a 5xx or a 429 an
:class:`~worker.api.auth.base.AuthUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from pydantic import SecretStr

from worker.api.auth.base import AuthError, AuthUnavailableError, Expiring, parse_time


@dataclass(frozen=True)
class IamLogin:
    """Who logs in to IAM, and for which project."""

    endpoint: str
    user: str
    password: SecretStr = field(repr=False)
    domain: str
    project_id: str

    def body(self) -> dict[str, Any]:
        """The password login scoped to the project, exactly as IAM documents it."""
        return {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.user,
                            "password": self.password.get_secret_value(),
                            "domain": {"name": self.domain},
                        }
                    },
                },
                "scope": {"project": {"id": self.project_id}},
            }
        }

    @property
    def identity(self) -> str:
        return "|".join([self.user, self.domain, self.project_id, self.endpoint])


@dataclass(frozen=True)
class CachedToken(Expiring):
    """A token and its validity on this host's clock (epoch seconds)."""

    value: str = field(repr=False)
    exp: float
    iat: float
    iam_expires_at: str
    # Fetched because the API refused the previous token: if the API refuses this one too,
    # logging in again will not help (see IamTokenProvider.renew).
    after_rejection: bool = False
    blob: str | None = field(default=None, repr=False, compare=False)  # as stored in Redis


def fetch_token(login: IamLogin, http: httpx.Client, clock: Callable[[], float]) -> CachedToken:
    """Log in to IAM with the password; the token and its lifetime placed on ``clock``.

    Raises :class:`AuthError` when IAM refuses the login (the line says what to fix) and
    :class:`AuthUnavailableError` when IAM could not be asked.
    """
    url = f"{login.endpoint}/v3/auth/tokens"
    started = clock()
    try:
        response = http.post(url, json=login.body(), headers={"Content-Type": "application/json;charset=utf8"})
    except httpx.HTTPError as exc:
        raise AuthUnavailableError(
            f"IAM login failed: no answer from {login.endpoint} ({type(exc).__name__}); "
            "check SFS_CLEANUP_IAM_ENDPOINT and the network"
        ) from None
    status = response.status_code
    if status in (400, 401, 403, 404):
        raise AuthError(_refusal_line(login, response))
    if not 200 <= status < 300:
        raise AuthUnavailableError(
            f"IAM login failed: HTTP {status}{_iam_message(login, response)} from {login.endpoint}; "
            "will try again later"
        )
    value = response.headers.get("X-Subject-Token")
    expires_at, issued_at = _token_times(response)
    if not value or expires_at is None:
        raise AuthError(
            f"IAM login answered HTTP {status} without a token (X-Subject-Token and "
            f"token.expires_at): check that SFS_CLEANUP_IAM_ENDPOINT ({login.endpoint}) is IAM"
        )
    # Lifetime as IAM states it, placed on this host's clock: immune to clock skew.
    lifetime = expires_at.timestamp() - (issued_at.timestamp() if issued_at else started)
    if lifetime <= 0:
        raise AuthError(
            f"IAM login returned a token that already expired (expires_at {expires_at.isoformat()}): "
            "check this machine's clock (NTP)"
        )
    return CachedToken(value, started + lifetime, started, expires_at.isoformat())


def _refusal_line(login: IamLogin, response: httpx.Response) -> str:
    status = response.status_code
    what = f"IAM refused the login (HTTP {status}{_iam_message(login, response)})"
    if status == 401:
        fix = "check SFS_CLEANUP_IAM_USER, SFS_CLEANUP_IAM_PASSWORD and SFS_CLEANUP_IAM_DOMAIN"
    elif status == 403:
        fix = (
            "the user may not log in with a password, is locked or disabled, or has no access to "
            f"project {login.project_id}: check SFS_CLEANUP_IAM_USER, SFS_CLEANUP_IAM_DOMAIN "
            "and SFS_CLEANUP_PROJECT_ID"
        )
    elif status == 404:
        fix = f"no IAM token API at {login.endpoint}: check SFS_CLEANUP_IAM_ENDPOINT"
    else:
        fix = "check SFS_CLEANUP_PROJECT_ID (the token's scope), SFS_CLEANUP_IAM_DOMAIN and SFS_CLEANUP_IAM_USER"
    return f"{what}: {fix}"


def _iam_message(login: IamLogin, response: httpx.Response) -> str:
    """IAM's own explanation, if any, as ``: text`` (one line, bounded, password scrubbed)."""
    text: str | None = None
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            text = str(error["message"])
        elif data.get("error_msg"):
            text = str(data["error_msg"])
    if not text:
        return ""
    password = login.password.get_secret_value()
    if password:
        text = text.replace(password, "***")
    text = " ".join(text.split())[:200]
    return f": {text}"


def _token_times(response: httpx.Response) -> tuple[datetime | None, datetime | None]:
    try:
        data = response.json()
    except ValueError:
        return None, None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, dict):
        return None, None
    return parse_time(token.get("expires_at")), parse_time(token.get("issued_at"))
