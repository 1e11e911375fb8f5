"""Sending requests and reading answers off the wire, bounded: no body larger than
:data:`MAX_BODY_BYTES` is kept.

The API's answers are small; a huge (or endless) body is a broken proxy or a hostile endpoint,
so it is read in chunks and dropped past the bound rather than read whole into memory.

:class:`Urllib3Transport` is the client's transport on the wire: httpx's transport seam (so the
auth flows and tests' ``httpx.MockTransport`` stay as they are) over urllib3's connection pool.
httpx's own transport (httpcore and h11) cost about twice urllib3's CPU per request, measured
on the throughput benchmark's DELETEs, and a worker is bound by its CPU.
"""

from __future__ import annotations

import math
import ssl
import threading
from collections.abc import Mapping
from typing import Any, Final

import httpx
import urllib3
from urllib3 import exceptions as u3

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


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The gateway's request ID, bounded, from whichever of its headers is present (``headers``:
    httpx's, which compare names case-insensitively, or a dict of lower-cased names)."""
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return str(value)[:128]
    return None


class ReadResponse(httpx.Response):
    """An answer whose body its transport has already read within :data:`MAX_BODY_BYTES`."""


def read_bounded(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """The response with its body read, if it is at most :data:`MAX_BODY_BYTES` (decoded).

    Read in chunks and dropped past the bound, so a huge (or endless) body costs at most the
    bound in memory. The returned response carries the bytes as read, for the auth flow and the
    caller alike. Raises :class:`BodyTooLargeError` past the bound.
    """
    if isinstance(response, ReadResponse):
        return response
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


# Connect errors may be tried again (nothing was sent); an error after the request left never is:
# a DELETE whose answer was lost is the job's to decide on (it asks again, or shows the task).
_RETRY: Final = urllib3.Retry(total=None, connect=1, read=0, status=0, other=0, redirect=False)


class Urllib3Transport(httpx.BaseTransport):
    """httpx's transport seam over urllib3: one connection per host, for one sending thread.

    The answer comes back read (bounded, decoded) as a :class:`ReadResponse`; urllib3's errors
    come back as httpx's (:func:`httpx_error`), so the client's answers name the same errors
    whichever transport sent the request. Like httpx's own transport it ignores proxy variables
    and never follows redirects. Threads sharing one transport wait for its connection.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, maxsize: int = 1) -> None:
        self._ssl_context = ssl_context
        self._maxsize = maxsize
        self._pools: dict[tuple[str, str, int], urllib3.HTTPConnectionPool] = {}
        self._timeouts: dict[tuple[Any, ...], urllib3.Timeout] = {}
        self._lock = threading.Lock()

    def _pool(self, url: httpx.URL) -> urllib3.HTTPConnectionPool:
        scheme, host = url.scheme, url.host
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    if scheme == "https":
                        pool = urllib3.HTTPSConnectionPool(
                            host, port, maxsize=self._maxsize, block=True, ssl_context=self._ssl_context
                        )
                    elif scheme == "http":
                        pool = urllib3.HTTPConnectionPool(host, port, maxsize=self._maxsize, block=True)
                    else:
                        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
                    self._pools[key] = pool
        return pool

    def _timeout(self, request: httpx.Request) -> tuple[urllib3.Timeout, int | None]:
        """urllib3's timeouts for httpx's (the wait for a pooled connection in whole seconds)."""
        given = request.extensions.get("timeout") or {}
        key = (given.get("connect"), given.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = urllib3.Timeout(connect=key[0], read=key[1])
        pool = given.get("pool")
        return timeout, None if pool is None else math.ceil(pool)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pool(request.url)
        timeout, pool_timeout = self._timeout(request)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        try:
            answer = pool.urlopen(
                request.method,
                request.url.raw_path.decode("ascii"),
                body=request.content or None,
                headers=headers,
                retries=_RETRY,
                redirect=False,
                assert_same_host=False,
                timeout=timeout,
                pool_timeout=pool_timeout,
                preload_content=False,
                decode_content=True,
            )
            try:
                body = answer.read(MAX_BODY_BYTES + 1)
                if len(body) > MAX_BODY_BYTES:
                    answer.close()  # the rest is never read: the connection cannot be used again
            except BaseException:
                answer.close()
                raise
            finally:
                answer.release_conn()
        except u3.HTTPError as exc:
            raise httpx_error(exc, request) from exc
        pairs = [(k, v) for k, v in answer.headers.items() if k.lower() not in _WIRE_HEADERS]
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLargeError(httpx.Response(answer.status, headers=pairs, request=request))
        return ReadResponse(answer.status, headers=pairs, content=body, request=request)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()


def httpx_error(exc: u3.HTTPError, request: httpx.Request) -> httpx.TransportError:
    """The httpx error for a urllib3 one: connect errors (nothing sent) stay connect errors."""
    if isinstance(exc, u3.MaxRetryError) and isinstance(exc.reason, u3.HTTPError):
        exc = exc.reason
    text = str(exc)
    kind: type[httpx.TransportError]
    if isinstance(exc, u3.NewConnectionError | u3.SSLError | u3.ProxyError):
        kind = httpx.ConnectError  # refused, unresolvable, TLS handshake failed: nothing left
    elif isinstance(exc, u3.ConnectTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, u3.EmptyPoolError):
        kind = httpx.PoolTimeout
    elif isinstance(exc, u3.ReadTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, u3.ProtocolError):
        kind = httpx.RemoteProtocolError  # the connection dropped, the request may have arrived
    elif isinstance(exc, u3.LocationValueError):
        kind = httpx.UnsupportedProtocol
    else:
        kind = httpx.NetworkError
    return kind(text, request=request)
