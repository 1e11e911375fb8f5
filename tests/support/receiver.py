"""A webhook receiver for tests: an HTTP server on 127.0.0.1, in a thread, recording every POST.

``with Receiver(fail_first=2) as r:`` answers 500 to the first two requests and 200 after;
``r.url`` is where to send, ``r.requests`` what came (method, path, headers, body, answer).
It can also hold its answer (``delay_s``), to make a sender time out.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    fail_first: int = 0  # answer fail_status to this many requests first
    fail_status: int = 500
    delay_s: float = 0.0  # wait this long before answering
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def ok(self) -> list[Received]:
        """The requests that were answered 2xx: the deliveries that counted."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    failing = len(receiver.requests) < receiver.fail_first
                    status = receiver.fail_status if failing else 200
                    receiver.requests.append(
                        Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                answer = b'{"ok":false}' if failing else b'{"ok":true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
