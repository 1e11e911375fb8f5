"""Reading answers off the wire, bounded: no body larger than :data:`MAX_BODY_BYTES` is kept.

The API's answers are small; a huge (or endless) body is a broken proxy or a hostile endpoint,
so it is read in chunks and dropped past the bound rather than read whole into memory.
"""

from __future__ import annotations

from typing import Final

import httpx

_REQUEST_ID_HEADERS: Final = ("x-request-id", "x-openstack-request-id")
#: The largest answer body read. The API's answers are a few KiB (a page of 1,000 tasks is
#: about 300 KiB); anything larger is a broken proxy or a hostile endpoint, not an answer.
MAX_BODY_BYTES: Final = 1024 * 1024
TOO_LARGE: Final = "response.too_large"
# Headers that describe the body as it came over the wire, not as it was read (decoded).
_WIRE_HEADERS: Final = ("content-encoding", "content-length", "transfer-encoding")


class BodyTooLargeError(Exception):
    """The answer's body is larger than :data:`MAX_BODY_BYTES`; the response is returned with it."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def request_id_of(headers: httpx.Headers) -> str | None:
    """The gateway's request ID, bounded, from whichever of its headers is present."""
    for name in _REQUEST_ID_HEADERS:  # httpx.Headers compares names case-insensitively
        value = headers.get(name)
        if value:
            return str(value)[:128]
    return None


def read_bounded(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """The response with its body read, if it is at most :data:`MAX_BODY_BYTES` (decoded).

    Read in chunks and dropped past the bound, so a huge (or endless) body costs at most the
    bound in memory. The returned response carries the bytes as read, for the auth flow and the
    caller alike. Raises :class:`BodyTooLargeError` past the bound.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BodyTooLargeError(response)
            chunks.append(chunk)
    finally:
        response.close()
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=b"".join(chunks),
        request=request,
        extensions=response.extensions,
    )
