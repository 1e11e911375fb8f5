"""The client's transport on the wire (urllib3 behind httpx's seam), against a real local server.

What the fake API cannot send: an endless body, a gzip-encoded answer, a connection closed
before the answer, TLS with a certificate nobody trusts. Each case checks what the client's
caller sees (the answer, the error's kind) and that the connection left behind serves the next
request correctly.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from worker.api.answers import Verdict
from worker.api.client import ClientConfig, SfsTurboClient
from worker.api.transport import MAX_BODY_BYTES, TOO_LARGE, Urllib3Transport

pytestmark = pytest.mark.integration

PROJECT = "0123456789abcdef0123456789abcdef"
SHARE = "5bc8fbbc-bde5-4099-8164-d8399f767c45"
TASK = "fedcba9876543210fedcba9876543210"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway

    def log_message(self, *args: object) -> None:
        pass

    def do_DELETE(self) -> None:
        self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "endless":
            self.send_response(500)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(MAX_BODY_BYTES // len(chunk) + 64):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the client hung up past its bound, as it should
            self.close_connection = True
            return
        if mode == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = b'{"error_code": "SFS.TURBO.0106", "error_msg": "task not found"}'
        if mode == "gzip":
            body = gzip.compress(body)
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Request-Id", "req-1")
        if mode == "gzip":
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.seen = []  # type: ignore[attr-defined]
    httpd.mode = "plain"  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def client_for(httpd: ThreadingHTTPServer) -> SfsTurboClient:
    host, port = httpd.server_address[:2]
    return SfsTurboClient(ClientConfig(endpoint=f"http://{host!s}:{port}", project_id=PROJECT, read_timeout_s=5))


def test_an_answer_is_read_and_classified(server: ThreadingHTTPServer) -> None:
    with client_for(server) as client:
        answer = client.delete_task(SHARE, TASK)
    assert (answer.status, answer.verdict, answer.error_code) == (400, Verdict.GONE, "SFS.TURBO.0106")
    assert answer.request_id == "req-1"
    ((method, path, headers),) = server.seen  # type: ignore[attr-defined]
    assert (method, path) == ("DELETE", f"/v1/{PROJECT}/sfs-turbo/{SHARE}/hpc-cache/task/{TASK}")
    assert headers["User-Agent"].startswith("sfs-turbo-cleanup/")


def test_a_gzip_answer_is_decoded_once(server: ThreadingHTTPServer) -> None:
    server.mode = "gzip"  # type: ignore[attr-defined]
    with client_for(server) as client:
        answer = client.delete_task(SHARE, TASK)
    assert (answer.verdict, answer.error_code) == (Verdict.GONE, "SFS.TURBO.0106")


def test_an_endless_body_is_cut_at_the_bound_and_the_next_request_is_clean(server: ThreadingHTTPServer) -> None:
    server.mode = "endless"  # type: ignore[attr-defined]
    with client_for(server) as client:
        answer = client.delete_task(SHARE, TASK)
        assert (answer.status, answer.verdict, answer.error_code) == (500, Verdict.RETRYABLE, TOO_LARGE)
        server.mode = "plain"  # type: ignore[attr-defined]
        # The cut connection is not used again: the next answer is read whole and right.
        assert client.delete_task(SHARE, TASK).error_code == "SFS.TURBO.0106"


def test_a_connection_closed_before_the_answer_is_an_error_that_may_have_deleted(server: ThreadingHTTPServer) -> None:
    server.mode = "drop"  # type: ignore[attr-defined]
    with client_for(server) as client:
        answer = client.delete_task(SHARE, TASK)
    assert (answer.status, answer.verdict) == (0, Verdict.RETRYABLE)
    # Not a connect error: the request left, so the job must not count it as unsent.
    assert answer.error_code == "transport.RemoteProtocolError"
    assert len(server.seen) == 1  # type: ignore[attr-defined]  # never sent again by the transport


def test_nobody_listening_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: the connection is refused
        client = SfsTurboClient(ClientConfig(endpoint=f"http://127.0.0.1:{port}", project_id=PROJECT))
        with client:
            answer = client.delete_task(SHARE, TASK)
    assert (answer.status, answer.verdict, answer.error_code) == (0, Verdict.RETRYABLE, "transport.ConnectError")


def test_a_read_timeout_is_httpx_read_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts, never answers
        port = listener.getsockname()[1]
        transport = Urllib3Transport()
        request = httpx.Request(
            "DELETE", f"http://127.0.0.1:{port}/x", extensions={"timeout": {"connect": 1.0, "read": 0.2}}
        )
        with pytest.raises(httpx.ReadTimeout):
            transport.handle_request(request)
        transport.close()


# --- TLS: the certificate is checked, and nothing is sent to a server that fails the check ------
def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(server: ThreadingHTTPServer, tmp_path: Path) -> tuple[ThreadingHTTPServer, Path]:
    cert_path, key_path = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server, cert_path


def test_a_certificate_nobody_trusts_is_refused_before_anything_is_sent(
    tls_server: tuple[ThreadingHTTPServer, Path],
) -> None:
    httpd, _ = tls_server
    port = httpd.server_address[1]
    with SfsTurboClient(ClientConfig(endpoint=f"https://127.0.0.1:{port}", project_id=PROJECT)) as client:
        answer = client.delete_task(SHARE, TASK)
    assert (answer.status, answer.verdict, answer.error_code) == (0, Verdict.RETRYABLE, "transport.ConnectError")
    assert "CERTIFICATE_VERIFY_FAILED" in (answer.error_msg or "")
    assert httpd.seen == []  # type: ignore[attr-defined]


def test_a_trusted_certificate_is_accepted(tls_server: tuple[ThreadingHTTPServer, Path]) -> None:
    httpd, cert_path = tls_server
    port = httpd.server_address[1]
    transport = Urllib3Transport(ssl.create_default_context(cafile=str(cert_path)))
    request = httpx.Request("DELETE", f"https://127.0.0.1:{port}/v1/x", extensions={"timeout": {"read": 5.0}})
    response = transport.handle_request(request)
    transport.close()
    assert response.status_code == 400 and response.json()["error_code"] == "SFS.TURBO.0106"
    assert len(httpd.seen) == 1  # type: ignore[attr-defined]
