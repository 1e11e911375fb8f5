"""The ``aksk`` mode: every request is signed with ``SDK-HMAC-SHA256`` (:mod:`worker.api.signer`)."""

from __future__ import annotations

from collections.abc import Generator

import httpx

from worker.api.signer import AkSkCredentials, sign, sign_headers
from worker.api.wire import WireAnswer, WireRequest


class AkSkAuth(httpx.Auth):
    """Signs every request (and every retry, with a fresh ``X-Sdk-Date``)."""

    requires_request_body = True  # the body's hash is signed

    def __init__(self, creds: AkSkCredentials, project_id: str) -> None:
        self._creds = creds
        self._project_id = project_id

    def __repr__(self) -> str:
        return f"AkSkAuth({self._creds!r}, project_id={self._project_id!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sign(request, self._creds, self._project_id)
        yield request

    def wire_flow(self, request: WireRequest) -> Generator[WireRequest, WireAnswer, None]:
        sign_headers(request.method, request.target, request.headers, self._creds, self._project_id)
        yield request
