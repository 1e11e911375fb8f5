"""A fake of IAM's assume-role call: temporary credentials of an agency in another account.

``POST /v3.0/OS-CREDENTIAL/securitytokens`` with ``{"auth": {"identity": {"methods":
["assume_role"], "assume_role": {"domain_name" | "domain_id", "agency_name",
"duration_seconds"}}}}``, authenticated like any call (here: signed with the metadata service's
temporary keys, security token included). An agency listed in ``FakeConfig.agencies`` is
assumed: 201 with a ``credential`` object whose key the fake's gateway accepts until it expires
(keys start ``AKAGY``, so a test can tell them from the instance's own ``AKTMP`` keys).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.metadata import MetadataService

ASSUME_ROLE_PATH: Final = "/v3.0/OS-CREDENTIAL/securitytokens"
#: Keys of assumed agencies start so (the instance's own start AKTMP).
AGENCY_KEY_PREFIX: Final = "AKAGY"
Authenticate = Callable[[web.Request], Awaitable[web.Response | None]]


def _iam_error(status: int, title: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "title": title}}, status=status)


class AgencyService:
    """The assume-role call; its keys live in the metadata service's registry (one gateway view)."""

    def __init__(self, config: Callable[[], FakeConfig], keys: MetadataService, authenticate: Authenticate) -> None:
        self._config = config
        self._keys = keys
        self._authenticate = authenticate
        self.requests = 0
        self.assumed: Counter[str] = Counter()  # "domain/agency" -> keys issued

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("POST", ASSUME_ROLE_PATH, self._assume)

    def snapshot(self) -> dict[str, Any]:
        return {"requests": self.requests, "assumed": dict(self.assumed)}

    async def _assume(self, request: web.Request) -> web.Response:
        self.requests += 1
        refused = await self._authenticate(request)
        if refused is not None:
            return refused
        try:
            body: Any = json.loads(await request.read())
            identity = body["auth"]["identity"]
            if identity["methods"] != ["assume_role"]:
                raise KeyError("methods")
            assume = identity["assume_role"]
            agency = str(assume["agency_name"])
            domain = str(assume.get("domain_name") or assume.get("domain_id") or "")
            duration = int(assume.get("duration_seconds", 900))
        except (ValueError, KeyError, TypeError):
            return _iam_error(400, "Bad Request", "The request body is invalid: an assume_role identity is required.")
        if not domain or not 900 <= duration <= 86400:
            return _iam_error(400, "Bad Request", "domain_name or domain_id, and duration_seconds 900..86400")
        config = self._config()
        if not any(a.get("domain") == domain and a.get("name") == agency for a in config.agencies):
            return _iam_error(403, "Forbidden", "You have no permission to assume this agency.")
        # The fake may hand out shorter-lived keys than asked, so tests can see them renewed.
        ttl = min(float(duration), config.agency_credential_ttl_s or float(duration))
        self.assumed[f"{domain}/{agency}"] += 1
        return web.json_response({"credential": self._keys.issue(ttl, AGENCY_KEY_PREFIX)}, status=201)
