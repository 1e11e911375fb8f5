"""The ``token`` mode: a ready IAM token goes out as ``X-Auth-Token``.

It cannot be renewed, so a 401 passes through unchanged and the caller reports it.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx
from pydantic import SecretStr

from worker.api.auth.base import put_token, put_wire_token
from worker.api.wire import WireAnswer, WireRequest


class TokenAuth(httpx.Auth):
    """A ready token as ``X-Auth-Token``; it cannot be renewed, so a 401 passes through."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "TokenAuth(token=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        put_token(request, self._token.get_secret_value())
        yield request

    def wire_flow(self, request: WireRequest) -> Generator[WireRequest, WireAnswer, None]:
        put_wire_token(request.headers, self._token.get_secret_value())
        yield request
