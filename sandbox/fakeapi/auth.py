"""The gateway's authentication and IAM's password login, with the answers Huawei documents.

Three ways in, checked in this order: an ``X-Auth-Token`` (static or issued here), an
``SDK-HMAC-SHA256`` signature, else the request is refused as having no token.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from sandbox.fakeapi import signature
from sandbox.fakeapi.config import FakeConfig

_PREFIX: Final = "Incorrect IAM authentication information: "


class TemporaryKeys(Protocol):
    """Keys issued at run time (the metadata service's): the secret while valid, and the token."""

    def secret_for(self, access_key: str, now: float) -> str | None: ...

    def security_token_for(self, access_key: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A gateway error: HTTP status, ``APIGW.xxxx`` code and message."""

    status: int
    code: str
    message: str


@dataclass(slots=True)
class _Issued:
    project_id: str
    expires_at: float
    revoked: bool = False


class TokenRegistry:
    """Tokens issued by the fake IAM; expiry and revocation answer ``APIGW.0307``."""

    def __init__(self) -> None:
        self._issued: dict[str, _Issued] = {}

    def issue(self, project_id: str, now: float, ttl_s: float) -> tuple[str, float]:
        # Real tokens are long opaque strings starting "MII"; a short one here keeps logs readable.
        token = "MIIfake" + secrets.token_urlsafe(48)
        expires_at = now + ttl_s
        self._issued[token] = _Issued(project_id, expires_at)
        return token, expires_at

    def revoke_all(self) -> int:
        for issued in self._issued.values():
            issued.revoked = True
        return len(self._issued)

    def check(self, token: str, now: float) -> Refusal | None:
        """None when ``token`` was issued here and is still good, else the gateway's refusal."""
        issued = self._issued.get(token)
        if issued is None:
            return Refusal(401, "APIGW.0301", _PREFIX + "decrypt token fail")
        if issued.revoked or now >= issued.expires_at:
            return Refusal(401, "APIGW.0307", "The token must be updated.")
        return None


def authenticate(
    *,
    config: FakeConfig,
    tokens: TokenRegistry,
    temporary: TemporaryKeys | None = None,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
) -> Refusal | None:
    """None when the request may pass the gateway, else why not."""
    token = headers.get("x-auth-token")
    if token:
        if any(hmac.compare_digest(token, known) for known in config.tokens):
            return None
        return tokens.check(token, now)
    if headers.get("authorization", "").startswith(signature.ALGORITHM):
        try:
            signature.verify(
                method=method,
                raw_path=raw_path,
                raw_query=raw_query,
                headers=headers,
                body=body,
                secret_for=lambda ak: config.aksk.get(ak) or (temporary.secret_for(ak, now) if temporary else None),
                security_token_for=lambda ak: (
                    config.security_tokens.get(ak) or (temporary.security_token_for(ak) if temporary else None)
                ),
                now=datetime.fromtimestamp(now + config.clock_offset_s, UTC),
                max_skew_s=config.max_clock_skew_s,
            )
        except signature.SignatureError as failure:
            return Refusal(failure.status, failure.code, failure.message)
        return None
    return Refusal(401, "APIGW.0301", _PREFIX + "x-auth-token not found")


@dataclass(frozen=True, slots=True)
class LoginResult:
    status: int
    body: dict[str, Any]
    token: str | None = None


def _keystone_error(status: int, title: str, message: str) -> LoginResult:
    return LoginResult(status, {"error": {"code": status, "message": message, "title": title}})


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def login(body: Any, *, config: FakeConfig, project_id: str, tokens: TokenRegistry, now: float) -> LoginResult:
    """``POST /v3/auth/tokens`` with a project-scoped password login (the only kind the fake knows)."""
    try:
        auth = body["auth"]
        identity = auth["identity"]
        if "password" not in identity["methods"]:
            raise KeyError("methods")
        user = identity["password"]["user"]
        name, password = str(user["name"]), str(user["password"])
        domain = str(user["domain"]["name"])
    except (KeyError, TypeError):
        return _keystone_error(400, "Bad Request", "The request body is invalid: a password login is required.")
    scope = auth.get("scope") if isinstance(auth, dict) else None
    project = scope.get("project") if isinstance(scope, dict) else None
    if not isinstance(project, dict) or not (project.get("id") or project.get("name")):
        return _keystone_error(400, "Bad Request", "The request body is invalid: a project scope is required.")
    known = any(
        hmac.compare_digest(name, u["name"])
        and hmac.compare_digest(password, u["password"])
        and hmac.compare_digest(domain, u["domain"])
        for u in config.iam_users
    )
    if not known:
        return _keystone_error(401, "Unauthorized", "The username or password is wrong.")
    if project.get("id", project_id) != project_id or project.get("name", config.region) != config.region:
        return _keystone_error(401, "Unauthorized", "The project in the scope is not available to this user.")
    token, expires_at = tokens.issue(project_id, now, config.token_ttl_s)
    return LoginResult(
        201,
        {
            "token": {
                "expires_at": _iso(expires_at),
                "issued_at": _iso(now),
                "methods": ["password"],
                "project": {"id": project_id, "name": config.region, "domain": {"name": domain}},
                "user": {"name": name, "domain": {"name": domain}, "password_expires_at": ""},
                "roles": [{"name": "te_admin"}],
                "catalog": [],
            }
        },
        token,
    )
