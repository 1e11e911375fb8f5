"""The ``token`` mode: a ready IAM token goes out as ``X-Auth-Token``.

It cannot be renewed, so a 401 passes through unchanged and the caller reports it.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx
from pydantic import SecretStr

from worker.api.auth.base import put_token


class TokenAuth(httpx.Auth):
    """A ready token as ``X-Auth-Token``; it cannot be renewed, so a 401 passes through."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "TokenAuth(token=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        put_token(request, self._token.get_secret_value())
        yield request
