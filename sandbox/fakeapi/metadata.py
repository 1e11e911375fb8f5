"""A fake of the ECS/CCE metadata service's temporary credentials, and the gateway's view of them.

An instance bound to an agency gets a temporary AK/SK and security token from
``GET /openstack/latest/securitykey`` (the official SDK's metadata credential provider first
asks ``PUT /meta-data/latest/api/token`` for a session token, sent as ``X-Metadata-Token``;
a metadata service without that call answers 404 and the SDK goes on without one). The answer:
``{"credential": {"access", "secret", "securitytoken", "expires_at"}}``, ``expires_at`` as
``%Y-%m-%dT%H:%M:%S.%fZ`` (UTC).

The fake serves both on the fake API's own port (``FakeConfig.metadata_*`` shape it) and keeps
every key it issued, so that its gateway accepts a request signed with one (security token
included) until the key expires. An expired or unknown key is refused like an unknown AK.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from sandbox.fakeapi.config import FakeConfig

SECURITYKEY_PATH: Final = "/openstack/latest/securitykey"
TOKEN_PATH: Final = "/meta-data/latest/api/token"  # noqa: S105 - a path
TOKEN_HEADER: Final = "X-Metadata-Token"  # noqa: S105 - a header name
TOKEN_TTL_HEADER: Final = "X-Metadata-Token-Ttl-Seconds"  # noqa: S105 - a header name
NO_AGENCY: Final = "Please configure Cloud Service Agency first"


@dataclass(frozen=True, slots=True)
class IssuedKey:
    secret: str
    security_token: str
    expires_at: float


class MetadataService:
    """The issued keys and the two metadata calls. Lives on the fake's event loop."""

    def __init__(self, config: Callable[[], FakeConfig]) -> None:
        self._config = config  # the fake's current config (patches land while it runs)
        self._keys: dict[str, IssuedKey] = {}
        self._session_tokens: set[str] = set()
        self.securitykey_requests = 0
        self.token_requests = 0
        self.issued = 0
        self.checked: Counter[str] = Counter()

    def issue(self, ttl_s: float, prefix: str) -> dict[str, str]:
        """A new temporary key, living ``ttl_s``: the ``credential`` object that hands it out."""
        now = time.time()
        access = prefix + secrets.token_hex(8).upper()
        key = IssuedKey(
            secret=secrets.token_urlsafe(30),
            security_token="gQpzZWN1cml0eXRva2Vu" + secrets.token_urlsafe(60),
            expires_at=now + ttl_s,
        )
        self._keys[access] = key
        self.issued += 1
        expires = datetime.fromtimestamp(key.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {"access": access, "secret": key.secret, "securitytoken": key.security_token, "expires_at": expires}

    # --- What the gateway asks -------------------------------------------------------------

    def secret_for(self, access_key: str, now: float) -> str | None:
        key = self._keys.get(access_key)
        if key is None or now >= key.expires_at:
            return None
        self.checked[access_key[:5]] += 1  # by kind: AKTMP (the instance's), AKAGY (an agency's)
        return key.secret

    def security_token_for(self, access_key: str) -> str | None:
        key = self._keys.get(access_key)
        return key.security_token if key is not None else None

    def issued_secrets(self) -> dict[str, str]:
        """Every SK and security token handed out, by name (for tests that look for leaks)."""
        found: dict[str, str] = {}
        for access, key in self._keys.items():
            found[f"SK of {access}"] = key.secret
            found[f"security token of {access}"] = key.security_token
        return found

    def snapshot(self) -> dict[str, Any]:
        return {
            "securitykey_requests": self.securitykey_requests,
            "token_requests": self.token_requests,
            "issued": self.issued,
            "signatures_checked": dict(self.checked),
        }

    # --- The routes ------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("PUT", TOKEN_PATH, self._token)
        app.router.add_route("GET", SECURITYKEY_PATH, self._securitykey)

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        config = self._config()
        if not config.metadata_session_tokens:
            return web.Response(status=404, text="404 Not Found")  # an older metadata service
        token = secrets.token_urlsafe(24)
        self._session_tokens.add(token)
        return web.Response(status=200, text=token)

    async def _securitykey(self, request: web.Request) -> web.Response:
        self.securitykey_requests += 1
        config = self._config()
        if config.metadata_session_tokens and request.headers.get(TOKEN_HEADER) not in self._session_tokens:
            return web.Response(status=401, text="401 Unauthorized")
        if not config.metadata_agency:
            return web.Response(status=401, text=NO_AGENCY)
        if self.securitykey_requests <= config.metadata_fail_first:
            return web.Response(status=500, text="500 Internal Server Error")
        body = {"credential": self.issue(config.metadata_credential_ttl_s, "AKTMP")}
        return web.json_response(body)
