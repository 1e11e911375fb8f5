"""The hand-written HTTP/1.1 client (worker/api/wire.py) against a real local server.

The server is a plain socket server scripted per test: it reads each request head and answers
with the bytes the test gives (or closes, resets, stays silent), so that every case a gateway or
a proxy can produce is checked as the client's caller sees it.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from worker.api.answers import Verdict
from worker.api.auth import AkSkAuth, IamAuth, TokenAuth
from worker.api.client import ClientConfig, SfsTurboClient
from worker.api.signer import AkSkCredentials, sign, sign_headers
from worker.api.transport import MAX_BODY_BYTES, TOO_LARGE
from worker.api.wire import Wire, WireBodyTooLargeError

PROJECT = "0123456789abcdef0123456789abcdef"
SHARE = "5bc8fbbc-bde5-4099-8164-d8399f767c45"
TASK = "fedcba9876543210fedcba9876543210"
GONE = b'{"errCode":"SFS.TURBO.0106","errMsg":"Invalid task id."}'

# What the server does with one request: the bytes to answer, or a callable acting on the socket.
Step = bytes | Callable[[socket.socket], None]


def answer(status: int, body: bytes = GONE, *extra: str, reason: str = "X") -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [*extra, "X-Request-Id: req-1", "", ""]
    return "\r\n".join(head).encode() + body


class Server:
    """Accepts connections; answers each request with the next step of ``steps``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        if tls is not None:
            self.listener = tls.wrap_socket(self.listener, server_side=True)
        self.port = self.listener.getsockname()[1]
        self.steps: list[Step] = []
        self.requests: list[bytes] = []
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except ssl.SSLError:
                continue  # a client that refused our certificate
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head)
                step = self.steps.pop(0) if self.steps else answer(400)
                if callable(step):
                    step(conn)
                    return
                try:
                    conn.sendall(step)
                except OSError:
                    return

    def close(self) -> None:
        self._stop = True
        self.listener.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


def wire_for(srv: Server, read_timeout_s: float = 5.0) -> Wire:
    return Wire(
        srv.url,
        connect_timeout_s=2.0,
        read_timeout_s=read_timeout_s,
        ssl_context=ssl.create_default_context,
        max_connections=4,
    )


def client_for(srv: Server, auth: httpx.Auth | None = None, read_timeout_s: float = 5.0) -> SfsTurboClient:
    return SfsTurboClient(ClientConfig(endpoint=srv.url, project_id=PROJECT, read_timeout_s=read_timeout_s), auth=auth)


def get(wire: Wire, path: str = "/x") -> tuple[int, dict[str, str], bytes]:
    got = wire.request("GET", path, {"Host": wire.netloc})
    return got.status, got.headers, got.body


def close_now(conn: socket.socket) -> None:
    conn.shutdown(socket.SHUT_RDWR)


def reset_now(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST


def test_keep_alive_carries_many_requests_over_one_connection(server: Server) -> None:
    wire = wire_for(server)
    for _ in range(5):
        status, headers, body = get(wire)
        assert (status, body, headers["x-request-id"]) == (400, GONE, "req-1")
    wire.close()
    assert server.connections == 1 and len(server.requests) == 5
    assert server.requests[0].startswith(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:")


def test_connection_close_answer_is_read_and_the_next_request_opens_a_new_connection(server: Server) -> None:
    server.steps = [answer(404, b'{"error_code":"APIGW.0101"}', "Connection: close"), answer(202, b"")]
    wire = wire_for(server)
    assert get(wire)[0] == 404
    assert get(wire)[:1] == (202,)
    wire.close()
    assert server.connections == 2


def test_an_idle_connection_closed_by_the_server_is_replaced_before_sending(server: Server) -> None:
    def answer_then_close(conn: socket.socket) -> None:
        conn.sendall(answer(202, b""))  # keep-alive promised, then closed while idle

    server.steps = [answer_then_close, answer(400)]
    wire = wire_for(server)
    assert get(wire)[0] == 202
    threading.Event().wait(0.1)  # the close reaches the client's socket
    assert get(wire)[0] == 400  # not an error: the dead connection was noticed before the send
    wire.close()
    assert server.connections == 2


def test_a_chunked_answer_with_extensions_and_trailers_is_joined(server: Server) -> None:
    body = b'{"errCode":"SFS.TURBO.0106"}'
    chunked = b"5;ext=1\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\nX-T: 1\r\n\r\n"
    server.steps = [b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked, answer(202, b"")]
    wire = wire_for(server)
    assert get(wire)[2] == body
    assert get(wire)[0] == 202  # the connection was left in step
    wire.close()
    assert server.connections == 1


def test_an_answer_without_length_runs_to_the_close(server: Server) -> None:
    def old_server(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 500 Oops\r\nContent-Type: application/json\r\n\r\n" + b'{"error_code":"X"}')

    server.steps = [old_server]
    wire = wire_for(server)
    assert get(wire)[::2] == (500, b'{"error_code":"X"}')
    assert get(wire)[0] == 400
    wire.close()


def test_a_gzip_answer_is_decoded(server: Server) -> None:
    server.steps = [answer(400, gzip.compress(GONE), "Content-Encoding: gzip")]
    wire = wire_for(server)
    assert get(wire)[2] == GONE
    wire.close()


def test_a_body_over_the_bound_is_not_read_and_its_connection_not_reused(server: Server) -> None:
    server.steps = [b"HTTP/1.1 500 X\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)]
    wire = wire_for(server)
    with pytest.raises(WireBodyTooLargeError) as caught:
        get(wire)
    assert caught.value.status == 500
    assert get(wire)[0] == 400
    wire.close()
    assert server.connections == 2


def test_an_endless_chunked_body_is_cut_at_the_bound_through_the_client(server: Server) -> None:
    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 500 X\r\nTransfer-Encoding: chunked\r\nX-Request-Id: big\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(MAX_BODY_BYTES // len(chunk) + 8):
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass

    server.steps = [endless]
    with client_for(server) as client:
        got = client.delete_task(SHARE, TASK)
        assert (got.status, got.verdict, got.error_code, got.request_id) == (500, Verdict.RETRYABLE, TOO_LARGE, "big")
        assert client.delete_task(SHARE, TASK).error_code == "SFS.TURBO.0106"


def test_4xx_and_5xx_bodies_are_read_and_classified_through_the_client(server: Server) -> None:
    server.steps = [
        answer(503, b'{"error_code":"SFS.TURBO.0011","error_msg":"busy"}', "Retry-After: 3"),
        answer(429, b'{"error_code":"APIGW.0308","error_msg":"limit"}'),
        answer(400),
        answer(202, b""),
    ]
    with client_for(server, TokenAuth(SecretStr("tok-1"))) as client:
        busy, throttled, gone, ok = (client.delete_task(SHARE, TASK) for _ in range(4))
    assert (busy.status, busy.verdict, busy.error_msg, busy.retry_after_s) == (503, Verdict.RETRYABLE, "busy", 3.0)
    assert (throttled.verdict, gone.verdict, ok.verdict) == (Verdict.THROTTLED, Verdict.GONE, Verdict.OK)
    assert server.connections == 1
    head = server.requests[0].decode()
    assert head.startswith(f"DELETE /v1/{PROJECT}/sfs-turbo/{SHARE}/hpc-cache/task/{TASK} HTTP/1.1\r\n")
    assert "\r\nX-Auth-Token: tok-1\r\n" in head and "\r\nUser-Agent: sfs-turbo-cleanup/" in head


@pytest.mark.parametrize("act", [close_now, reset_now], ids=["closed", "reset"])
def test_a_connection_lost_after_the_request_left_may_have_been_sent(
    server: Server, act: Callable[[socket.socket], None]
) -> None:
    server.steps = [act]
    with client_for(server) as client:
        got = client.delete_task(SHARE, TASK)
        # Not a connect error: the request left, so the job must not count it as unsent.
        assert (got.status, got.verdict, got.error_code) == (0, Verdict.RETRYABLE, "transport.RemoteProtocolError")
        assert len(server.requests) == 1  # never sent again by the client
        assert client.delete_task(SHARE, TASK).verdict is Verdict.GONE  # a new connection serves the next


def test_a_silent_server_is_a_read_timeout(server: Server) -> None:
    server.steps = [lambda conn: threading.Event().wait(2.0)]
    with client_for(server, read_timeout_s=0.2) as client:
        got = client.delete_task(SHARE, TASK)
    assert (got.status, got.error_code) == (0, "transport.ReadTimeout")


def test_nobody_listening_is_a_connect_error_nothing_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with SfsTurboClient(ClientConfig(endpoint=f"http://127.0.0.1:{port}", project_id=PROJECT)) as client:
            got = client.delete_task(SHARE, TASK)
    assert (got.status, got.verdict, got.error_code) == (0, Verdict.RETRYABLE, "transport.ConnectError")


def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(server: Server) -> None:
    wire = wire_for(server)
    with pytest.raises(httpx.LocalProtocolError):
        wire.request("DELETE", "/x", {"Host": wire.netloc, "X-Auth-Token": "a\r\nX-Evil: 1"})
    wire.close()
    assert server.requests == []


def test_the_wire_signs_exactly_as_the_httpx_path() -> None:
    creds = AkSkCredentials("AK0123", SecretStr("sk-secret"), SecretStr("sec-token"))
    now = datetime(2026, 12, 4, 5, 6, 7, tzinfo=UTC)
    path = f"/v1/{PROJECT}/sfs-turbo/{SHARE}/hpc-cache/task/{TASK}"
    headers = {"Host": "sfs.example:8443", "Content-Type": "application/json", "User-Agent": "ua/1"}
    sign_headers("DELETE", path, headers, creds, PROJECT, now)
    request = httpx.Request("DELETE", f"https://sfs.example:8443{path}", headers={"User-Agent": "ua/1"})
    request.headers["Content-Type"] = "application/json"
    sign(request, creds, PROJECT, now)
    assert headers["Authorization"] == request.headers["Authorization"]
    assert {k.lower(): v for k, v in headers.items()} == dict(request.headers)


def test_aksk_goes_over_the_wire_signed(server: Server) -> None:
    with client_for(server, AkSkAuth(AkSkCredentials("AK0123", SecretStr("sk")), PROJECT)) as client:
        assert client.delete_task(SHARE, TASK).verdict is Verdict.GONE
    head = server.requests[0].decode()
    assert "\r\nAuthorization: SDK-HMAC-SHA256 Access=AK0123, SignedHeaders=content-type;host;" in head
    assert f"\r\nX-Project-Id: {PROJECT}\r\n" in head


class Tokens:
    """An IamTokenProvider stand-in: hands out tok-1, and tok-2 once tok-1 is refused."""

    def __init__(self) -> None:
        self.current = "tok-1"
        self.renewals = 0

    def token(self) -> str:
        return self.current

    def renew(self, rejected: str) -> str:
        self.renewals += 1
        self.current = "tok-2"
        return self.current


def test_a_401_renews_the_token_once_and_the_resend_waits_for_its_slot(server: Server) -> None:
    server.steps = [answer(401, b'{"error_code":"APIGW.0307","error_msg":"expired"}'), answer(202, b"")]
    tokens = Tokens()
    paced: list[int] = []
    with client_for(server, IamAuth(tokens)) as client:  # type: ignore[arg-type]
        got = client.delete_task(SHARE, TASK, resend_pace=lambda: paced.append(1))
    assert (got.status, got.verdict, tokens.renewals, paced) == (202, Verdict.OK, 1, [1])
    assert [b"X-Auth-Token: tok-1" in r for r in server.requests] == [True, False]
    assert b"X-Auth-Token: tok-2" in server.requests[1]


def test_tls_is_verified_and_a_trusted_certificate_carries_requests(tmp_path: Path) -> None:
    from tests.integration.test_transport_wire import _self_signed

    cert_path, key_path = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    srv = Server(context)
    try:
        url = f"https://127.0.0.1:{srv.port}"
        trusted = Wire(
            url,
            connect_timeout_s=2.0,
            read_timeout_s=5.0,
            ssl_context=lambda: ssl.create_default_context(cafile=str(cert_path)),
            max_connections=1,
        )
        assert [get(trusted)[0] for _ in range(3)] == [400, 400, 400]
        trusted.close()
        untrusted = Wire(
            url, connect_timeout_s=2.0, read_timeout_s=5.0, ssl_context=ssl.create_default_context, max_connections=1
        )
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            get(untrusted)
        assert len(srv.requests) == 3  # nothing reached the server over the untrusted connection
    finally:
        srv.close()
