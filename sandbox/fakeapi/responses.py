"""How the fake answers: request IDs, JSON bodies, and the error shapes of SFS Turbo and the gateway."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Final

from aiohttp import web

API_PREFIX: Final = "/v1/{project_id}/sfs-turbo/{share_id}/hpc-cache"
SFS_ID_HEADER: Final = "X-request-id"
GATEWAY_ID_HEADER: Final = "X-Request-Id"

# When the request being answered reached the gateway (epoch s); aiohttp runs each request in a
# task of its own, so a context variable is per request.
ARRIVED: ContextVar[float] = ContextVar("sfs_fake_arrived")
TASK_NOT_FOUND: Final = ("SFS.TURBO.0106", "Invalid task id.")
PARAMETER_ERROR: Final = ("SFS.TURBO.0001", "parameter error")
INTERNAL_ERROR: Final = ("SFS.TURBO.0005", "Internal server error")
BUSY: Final = ("SFS.TURBO.0011", "The file system is being processed by another operation. Try again later.")
SHARE_ERRORS: Final = {
    "400-0002": (400, "SFS.TURBO.0002", "Cluster not found"),
    "404-0002": (404, "SFS.TURBO.0002", "Cluster not found"),
    "403-9000": (403, "SFS.TURBO.9000", "The share does not exist or you have no permission to access it."),
}

_ids = random.Random()
Inner = Callable[[web.Request, str], Awaitable[web.Response]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


def json_response(status: int, payload: Any, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


def sfs_error(status: int, error: tuple[str, str], rid: str) -> web.Response:
    return json_response(status, {"errCode": error[0], "errMsg": error[1]}, {SFS_ID_HEADER: rid})


def gateway_error(
    status: int, code: str, message: str, rid: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response(
        status,
        {"error_code": code, "error_msg": message, "request_id": rid},
        {GATEWAY_ID_HEADER: rid, **(headers or {})},
    )


class DropConnectionError(Exception):
    """Close the connection without an answer."""


def int_param(value: str | None, default: int) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        return None
