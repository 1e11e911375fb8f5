"""A small TCP proxy in front of a test Redis that can lose one reply on purpose.

``proxy.drop_reply_after("EVALSHA")`` arms it: the next client request that carries that command
is forwarded to Redis as usual (so Redis executes it), but its reply never reaches the client:
the proxy closes the client's connection instead. redis-py then sees a ``ConnectionError`` on
a command the server already ran, and its retry policy sends the same command again. That is
the "reply lost on the wire" case every ledger write has to survive.

Only loopback is used: the proxy listens on 127.0.0.1 and forwards to the given local port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import redis

_CHUNK = 65536
# After the first byte of a reply to be dropped, how long the proxy keeps reading (and
# discarding) what the server still sends, so every command of that request has run before the
# client's connection is closed.
_DRAIN_S = 0.15


def _marker(command: str) -> bytes:
    """How a command name appears in a RESP request (a bulk string): ``$7\\r\\nEVALSHA\\r\\n``."""
    name = command.upper().encode()
    return b"$%d\r\n%s\r\n" % (len(name), name)


@dataclass
class _Arm:
    marker: bytes
    times: int


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket
    drop_next_reply: bool = False
    tail: bytes = b""
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class DropReplyProxy:
    """``127.0.0.1:<port>`` forwarding to ``target``; loses replies when told to."""

    def __init__(self, target_url: str, *, drain_s: float = _DRAIN_S) -> None:
        self.drain_s = drain_s
        parts = urlsplit(target_url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the proxy only forwards to loopback, not {parts.hostname}")
        self._target_url = parts
        self._target = ("127.0.0.1", parts.port or 6379)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._arms: list[_Arm] = []
        self._links: list[_Link] = []
        self._stopped = threading.Event()
        self.dropped = 0  # replies lost so far
        self.matched: list[str] = []  # the command names whose replies were lost, in order
        self.connections = 0
        self._accepter = threading.Thread(target=self._accept, name="redis-proxy-accept", daemon=True)

    # --- control -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The target's URL with the proxy's address (same database, same credentials)."""
        netloc = f"127.0.0.1:{self.port}"
        if self._target_url.username or self._target_url.password:
            netloc = f"{self._target_url.username or ''}:{self._target_url.password or ''}@{netloc}"
        return urlunsplit(self._target_url._replace(netloc=netloc))

    def start(self) -> DropReplyProxy:
        self._accepter.start()
        return self

    def drop_reply_after(self, command: str, times: int = 1) -> None:
        """Lose the reply of the next ``times`` requests that carry ``command`` (e.g. ``EVALSHA``,
        ``EXEC``, ``EVAL``). A pipeline is one request: all of its replies are lost together."""
        with self._lock:
            self._arms.append(_Arm(_marker(command), times))

    def disarm(self) -> None:
        with self._lock:
            self._arms.clear()

    @property
    def armed(self) -> bool:
        with self._lock:
            return any(a.times > 0 for a in self._arms)

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._accepter.is_alive():
            self._accepter.join(timeout=2)
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    def __enter__(self) -> DropReplyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
                self.connections += 1
            threading.Thread(target=self._upstream, args=(link,), name="redis-proxy-up", daemon=True).start()
            threading.Thread(target=self._downstream, args=(link,), name="redis-proxy-down", daemon=True).start()

    def _match(self, link: _Link, chunk: bytes) -> None:
        """Arm the link if this chunk completes a request with an armed command."""
        window = (link.tail + chunk).upper()
        link.tail = window[-32:]
        with self._lock:
            for arm in self._arms:
                if arm.times > 0 and arm.marker in window:
                    arm.times -= 1
                    link.drop_next_reply = True
                    self.matched.append(arm.marker.split(b"\r\n")[1].decode())
                    return

    def _upstream(self, link: _Link) -> None:
        try:
            while True:
                chunk = link.client.recv(_CHUNK)
                if not chunk:
                    break
                if not link.drop_next_reply:
                    self._match(link, chunk)
                link.server.sendall(chunk)
        except OSError:
            pass
        finally:
            link.close()

    def _downstream(self, link: _Link) -> None:
        try:
            while True:
                chunk = link.server.recv(_CHUNK)
                if not chunk:
                    break
                if link.drop_next_reply:
                    # The server has run the request (it is answering it): read out the rest of
                    # its answer, deliver none of it, and hang up on the client.
                    link.server.settimeout(self.drain_s)
                    with contextlib.suppress(OSError):
                        while link.server.recv(_CHUNK):
                            pass
                    with self._lock:
                        self.dropped += 1
                    break
                link.client.sendall(chunk)
        except OSError:
            pass
        finally:
            link.close()


def load_ledger_scripts(url: str) -> None:
    """Load the ledger's Lua scripts into Redis, as a worker that has already written has them.

    Otherwise the first ``EVALSHA`` of a script answers ``NOSCRIPT`` without running anything,
    and losing that reply would prove nothing.
    """
    client = redis.Redis.from_url(url)
    try:
        for entry in resources.files("worker").joinpath("ledger/lua").iterdir():
            if entry.name.endswith(".lua"):
                client.script_load(entry.read_text())
    finally:
        client.close()
