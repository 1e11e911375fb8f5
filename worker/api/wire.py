"""A small HTTP/1.1 keep-alive client for the worker's hot calls: DELETE and show of one task.

Why hand-written: a worker is bound by its CPU. On this project's 2-vCPU machine, against the
fake at 0 ms, one thread: the client's whole DELETE with AK/SK cost 620 to 660 us of CPU
through httpx's request and answer models and urllib3 (http.client's header writing, the email
package's header parsing), of which the wire part (urllib3 alone) 360 us, against 35 us for
writing the same bytes to a socket and reading the answer by hand; through this module the whole
call costs 170 to 190 us (with a token: 490 to 560 us before, 105 to 160 after; measured with
``tests/benchmarks/profiling.py``'s micro-costs and a loop of 2,000 calls). This client writes
the request in one ``sendall`` and parses the answer minimally: the status, the headers (``Content-Length``, chunked
``Transfer-Encoding``, ``Connection``, ``Content-Encoding``, the request ID), and the body,
bounded by :data:`~worker.api.transport.MAX_BODY_BYTES`. It sends no request body and never
follows redirects; listings (query strings) and tests' ``httpx.MockTransport`` still go through
httpx (:mod:`worker.api.client`).

Errors are httpx's, so the client's answers name the same errors whichever path sent the
request: ``ConnectError``/``ConnectTimeout`` only when nothing can have left (the connection
was not made, TLS failed); once bytes may have left, a dropped connection is
``RemoteProtocolError`` and a silent server ``ReadTimeout`` (the DELETE may have arrived).

One connection per thread (a thread sends one request at a time), at most ``max_connections``
of them; threads beyond share the existing ones, each guarded by its lock. A kept-alive
connection that the server closed while idle is noticed before reuse (it reads as ready) and
replaced, so nothing is written to a dead socket that could have been avoided.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Generator
from typing import Final, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx

from worker.api.transport import MAX_BODY_BYTES

_READ: Final = 65536
_MAX_HEAD: Final = 65536  # the API's answers have a few hundred bytes of headers
_NO_BODY: Final = frozenset({204, 304})


class WireRequest:
    """A request as the auth flows see it on the hand-written path: ``headers`` has one spelling
    per name (the ones this code base writes), and the request has no query and no body."""

    __slots__ = ("headers", "method", "target")

    def __init__(self, method: str, target: str, headers: dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.headers = headers


class WireAnswer:
    """An answer read off the wire: header names lower-cased (repeated ones joined by ``, ``)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class WireAuth(Protocol):
    """An auth mode that can put its headers on a :class:`WireRequest` (its ``httpx.Auth`` twin)."""

    def wire_flow(self, request: WireRequest) -> Generator[WireRequest, WireAnswer, None]: ...


WireFlow = Callable[[WireRequest], Generator[WireRequest, WireAnswer, None]]


def as_is(request: WireRequest) -> Generator[WireRequest, WireAnswer, None]:
    """No auth: the request goes as it is (what ``httpx.Auth``'s own flow does)."""
    yield request


_Req = TypeVar("_Req")
_Ans = TypeVar("_Ans")


def drive(
    flow: Generator[_Req, _Ans, None], send: Callable[[_Req], _Ans], resend_pace: Callable[[], object] | None
) -> _Ans:
    """Run an auth flow (an ``httpx.Auth`` flow or a ``wire_flow``) to its last answer: ``send``
    each request it yields, feed the answer back; ``resend_pace`` is called before each resend
    (a credential renewed after a 401: one more request for the gateway's rate limit)."""
    try:
        request = next(flow)
        while True:
            answer = send(request)
            try:
                request = flow.send(answer)
            except StopIteration:
                return answer
            if resend_pace is not None:
                resend_pace()
    finally:
        flow.close()


def send_through(
    wire: Wire, flow_of: WireFlow, request: WireRequest, resend_pace: Callable[[], object] | None
) -> WireAnswer:
    """One request through an auth mode's ``wire_flow``, as the client drives ``httpx.Auth``
    flows (:func:`drive`). Raises what :meth:`Wire.request` does."""
    return drive(flow_of(request), lambda r: wire.request(r.method, r.target, r.headers), resend_pace)


class WireBodyTooLargeError(Exception):
    """The answer's body is larger than the bound; status and headers are what was read."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers


class _Connection:
    __slots__ = ("lock", "sock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None

    def drop(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class Wire:
    """Requests to one ``http``/``https`` endpoint over kept-alive connections (see the module)."""

    def __init__(
        self,
        endpoint: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        ssl_context: Callable[[], ssl.SSLContext],
        max_connections: int,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        #: The ``Host`` header, as httpx writes it (no port when it is the scheme's default).
        self.netloc = httpx.URL(endpoint).netloc.decode("ascii")
        #: The endpoint's own path, if any, which every request's target starts with.
        self.prefix = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._ssl_context = ssl_context
        self._max = max(1, max_connections)
        self._local = threading.local()
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.drop()

    def _connection(self) -> _Connection:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            with self._lock:
                if len(self._connections) < self._max:
                    connection = _Connection()
                    self._connections.append(connection)
                else:
                    connection = self._connections[threading.get_ident() % len(self._connections)]
            self._local.connection = connection
        return connection

    def _connect(self) -> socket.socket:
        """A new connection; every failure here is a connect error (nothing was sent). Tried
        twice, as urllib3 did (``connect=1``)."""
        for attempt in (1, 2):
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout)
            except TimeoutError as exc:
                if attempt == 2:
                    raise httpx.ConnectTimeout(str(exc) or "connect timed out") from exc
                continue
            except OSError as exc:
                if attempt == 2:
                    raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.https:
                    sock = self._ssl_context().wrap_socket(sock, server_hostname=self.host)
            except TimeoutError as exc:
                sock.close()
                raise httpx.ConnectTimeout(str(exc) or "TLS handshake timed out") from exc
            except OSError as exc:  # ssl.SSLError (a certificate nobody trusts) is an OSError
                sock.close()
                raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
            sock.settimeout(self._read_timeout)
            return sock
        raise AssertionError("unreachable")  # pragma: no cover

    def request(self, method: str, target: str, headers: dict[str, str]) -> WireAnswer:
        """Send ``method target`` (the whole path, :attr:`prefix` included) with ``headers``
        (``Host`` among them) and read the answer.

        Raises httpx's transport errors (see the module) and :class:`WireBodyTooLargeError`.
        """
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise httpx.LocalProtocolError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        lines.append("Accept-Encoding: identity\r\n\r\n")
        data = "".join(lines).encode("latin-1")
        connection = self._connection()
        with connection.lock:
            sock = connection.sock
            if sock is not None and _dropped(sock):
                connection.drop()
                sock = None
            if sock is None:
                sock = connection.sock = self._connect()
            try:
                sock.sendall(data)
                answer, reusable = _read_answer(sock, method)
            except BaseException as exc:
                connection.drop()  # its state is unknown: never used again
                if isinstance(exc, TimeoutError):
                    raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
                if isinstance(exc, OSError):
                    raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
                raise
            if not reusable:
                connection.drop()
            return answer


def _dropped(sock: socket.socket) -> bool:
    """An idle kept-alive connection that reads as ready was closed by the server (or holds
    something no request asked for): either way it must not carry the next request."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


def _read_answer(sock: socket.socket, method: str) -> tuple[WireAnswer, bool]:
    """The answer to one request, and whether the connection may carry another."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            if len(buf) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("answer headers too large")
            chunk = sock.recv(_READ)
            if not chunk:
                raise httpx.RemoteProtocolError("the server closed the connection without an answer")
            buf += chunk
            end = buf.find(b"\r\n\r\n")
        status, version, headers = _parse_head(buf[:end])
        buf = buf[end + 4 :]
        if status >= 200 or status == 101:
            break  # 1xx (100 Continue, 103 Early Hints): another head follows
    connection = headers.get("connection", "").lower()
    reusable = "keep-alive" in connection if version != "HTTP/1.1" else "close" not in connection
    if method == "HEAD" or status in _NO_BODY or status < 200:
        body = b""
    else:
        body, buf, to_end = _read_body(sock, buf, status, headers)
        reusable = reusable and not to_end
    if buf:  # more than the answer: nothing was asked for it, so the connection is out of step
        reusable = False
    encoding = headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate", "x-gzip") and body:
        body = _decoded(body, status, headers)
    return WireAnswer(status, headers, body), reusable


def _read_body(sock: socket.socket, buf: bytes, status: int, headers: dict[str, str]) -> tuple[bytes, bytes, bool]:
    """The body, what was read past it, and whether it ran to the end of the connection."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, buf = _read_chunked(sock, buf, status, headers)
        return body, buf, False
    if "content-length" in headers:
        try:
            length = int(headers["content-length"].split(",")[0])
        except ValueError as exc:
            raise httpx.RemoteProtocolError("bad Content-Length") from exc
        if length > MAX_BODY_BYTES:
            raise WireBodyTooLargeError(status, headers)
        while len(buf) < length:
            buf += _more(sock)
        return buf[:length], buf[length:], False
    while True:  # no length: the body runs to the end of the connection
        if len(buf) > MAX_BODY_BYTES:
            raise WireBodyTooLargeError(status, headers)
        chunk = sock.recv(_READ)
        if not chunk:
            return buf, b"", True
        buf += chunk


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError) as exc:
        raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise httpx.RemoteProtocolError(f"bad header line {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return status, parts[0], headers


def _read_chunked(sock: socket.socket, buf: bytes, status: int, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """A chunked body, bounded; returns it and what was read past its end."""
    chunks: list[bytes] = []
    size = 0
    while True:
        end = buf.find(b"\r\n")
        while end < 0:
            buf += _more(sock)
            end = buf.find(b"\r\n")
        try:
            length = int(buf[:end].split(b";", 1)[0], 16)
        except ValueError as exc:
            raise httpx.RemoteProtocolError("bad chunk size") from exc
        buf = buf[end + 2 :]
        if length == 0:  # trailers (if any) end with an empty line
            while True:
                end = buf.find(b"\r\n")
                while end < 0:
                    buf += _more(sock)
                    end = buf.find(b"\r\n")
                line, buf = buf[:end], buf[end + 2 :]
                if not line:
                    return b"".join(chunks), buf
        size += length
        if size > MAX_BODY_BYTES:
            raise WireBodyTooLargeError(status, headers)
        while len(buf) < length + 2:
            buf += _more(sock)
        chunks.append(buf[:length])
        buf = buf[length + 2 :]


def _more(sock: socket.socket) -> bytes:
    chunk = sock.recv(_READ)
    if not chunk:
        raise httpx.RemoteProtocolError("the server closed the connection inside the answer")
    return chunk


def _decoded(body: bytes, status: int, headers: dict[str, str]) -> bytes:
    """A gzip or deflate body decoded, within the bound."""
    decoder = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib, whichever the header says
    try:
        out = decoder.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as exc:  # a transport error like the others: the request did arrive
        raise httpx.RemoteProtocolError(f"undecodable {headers.get('content-encoding')} body") from exc
    if len(out) > MAX_BODY_BYTES:
        raise WireBodyTooLargeError(status, headers)
    return out
