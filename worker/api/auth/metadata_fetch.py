"""Temporary AK/SK and security token from the ECS/CCE metadata service, as the official SDK gets them.

An instance (or a CCE node) bound to an agency gets them from
``GET http://169.254.169.254/openstack/latest/securitykey``; the SDK's metadata credential
provider does so in two steps, which this module follows:

1. ``PUT /meta-data/latest/api/token`` with ``X-Metadata-Token-Ttl-Seconds`` asks for a session
   token (a 404, 405 or 503 means a metadata service without them: go on without one);
2. ``GET .../securitykey`` with ``X-Metadata-Token`` (if any). A 401 whose text is not the
   "configure Cloud Service Agency" one means the session token expired: fetch one and ask again
   once. The answer is ``{"credential": {"access", "secret", "securitytoken", "expires_at"}}``.

The lifetime is ``expires_at`` less the metadata service's ``Date`` (its own clock) when it sends
one, placed on this host's clock, so that a skewed clock cannot make fresh credentials look
expired. A refusal is an :class:`AuthError` saying what to fix, no answer or a 5xx an
:class:`AuthUnavailableError`. Nothing here puts the SK or the security token in a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from worker.api.auth.base import AuthError, AuthUnavailableError, Expiring, parse_time
from worker.api.signer import AkSkCredentials

SESSION_TOKEN_PATH: Final = "/meta-data/latest/api/token"  # noqa: S105 - a path
SESSION_TOKEN_HEADER: Final = "X-Metadata-Token"  # noqa: S105 - a header name
SESSION_TOKEN_TTL_HEADER: Final = "X-Metadata-Token-Ttl-Seconds"  # noqa: S105 - a header name
SESSION_TOKEN_TTL_S: Final = 6 * 3600  # as the SDK asks
NO_AGENCY_TEXT: Final = "Please configure Cloud Service Agency first"
_SETTING: Final = "SFS_CLEANUP_METADATA_URL"


@dataclass(frozen=True)
class TemporaryCredentials(Expiring):
    """A temporary AK/SK and its security token, valid until ``exp`` (this host's epoch seconds)."""

    access_key: str
    secret_key: SecretStr = field(repr=False)
    security_token: SecretStr = field(repr=False)
    exp: float
    iat: float
    expires_at: str
    blob: str | None = field(default=None, repr=False, compare=False)  # as stored in Redis

    def signing(self) -> AkSkCredentials:
        return AkSkCredentials(self.access_key, self.secret_key, self.security_token)


def fetch_credentials(url: str, http: httpx.Client, clock: Callable[[], float]) -> TemporaryCredentials:
    """Ask the metadata service at ``url`` (the securitykey address) for temporary credentials."""
    started = clock()
    session = _session_token(url, http, required=False)
    response = _get(url, http, session)
    if response.status_code == 401 and NO_AGENCY_TEXT not in response.text:
        response = _get(url, http, _session_token(url, http, required=True))
    status = response.status_code
    if status == 401 and NO_AGENCY_TEXT in response.text:
        raise AuthError(
            "the metadata service says no agency is bound to this instance: bind one (with the SFS "
            "Turbo permissions) to the ECS instance or CCE node, or use another credential mode"
        )
    if status in (400, 401, 403, 404):
        raise AuthError(f"the metadata service refused: HTTP {status} from {url}: check {_SETTING}")
    if not 200 <= status < 300:
        raise AuthUnavailableError(f"the metadata service answered HTTP {status} ({url}); will try again later")
    return read_credential(f"the metadata service ({url})", response, started)


def _session_token(url: str, http: httpx.Client, *, required: bool) -> str | None:
    parts = urlsplit(url)
    token_url = f"{parts.scheme}://{parts.netloc}{SESSION_TOKEN_PATH}"
    try:
        response = http.put(token_url, headers={SESSION_TOKEN_TTL_HEADER: str(SESSION_TOKEN_TTL_S)})
    except httpx.HTTPError as exc:
        raise _no_answer(url, exc) from None
    if response.status_code == 200 and response.text.strip():
        return response.text.strip()
    if response.status_code in (404, 405, 503) and not required:
        return None  # a metadata service without session tokens
    raise AuthUnavailableError(f"the metadata service gave no session token (HTTP {response.status_code}, {url})")


def _get(url: str, http: httpx.Client, session: str | None) -> httpx.Response:
    headers = {SESSION_TOKEN_HEADER: session} if session else {}
    try:
        return http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise _no_answer(url, exc) from None


def _no_answer(url: str, exc: Exception) -> AuthUnavailableError:
    return AuthUnavailableError(
        f"no answer from the metadata service at {url} ({type(exc).__name__}): "
        f"is this an ECS instance or CCE node, and {_SETTING} right?"
    )


def read_credential(where: str, response: httpx.Response, started: float) -> TemporaryCredentials:
    """The ``credential`` object of an answer (the metadata service's, or IAM's for an agency)."""
    try:
        data: Any = response.json()
    except ValueError:
        data = None
    found = data.get("credential") or data.get("credentials") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        raise AuthError(f"the answer of {where} has no 'credential' object")
    access = found.get("access") or found.get("accessKeyId")
    secret = found.get("secret") or found.get("secretAccessKey")
    token = found.get("securitytoken") or found.get("securityToken")
    expires_at = parse_time(found.get("expires_at") or found.get("expiration"))
    if not all(isinstance(v, str) and v for v in (access, secret, token)) or expires_at is None:
        missing = [
            name
            for name, value in (("access", access), ("secret", secret), ("securitytoken", token))
            if not isinstance(value, str) or not value
        ] + ([] if expires_at is not None else ["expires_at"])
        raise AuthError(f"the credential from {where} lacks {', '.join(missing)}")
    assert isinstance(access, str) and isinstance(secret, str) and isinstance(token, str)
    server_now = _server_date(response)
    lifetime = expires_at.timestamp() - (server_now.timestamp() if server_now else started)
    if lifetime <= 0:
        raise AuthError(
            f"{where} handed out credentials that already expired ({expires_at.isoformat()}): "
            "check this machine's clock (NTP)"
        )
    return TemporaryCredentials(
        access_key=access,
        secret_key=SecretStr(secret),
        security_token=SecretStr(token),
        exp=started + lifetime,
        iat=started,
        expires_at=expires_at.isoformat(),
    )


def _server_date(response: httpx.Response) -> datetime | None:
    value = response.headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
