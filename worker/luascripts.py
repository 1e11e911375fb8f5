"""Lua scripts sent in one write over one pooled connection, for the deletion path's hot calls.

Why not redis-py's ``Script`` and ``Pipeline``: every DELETE makes about three script calls (the
limiter's slot, the write-ahead gate, the record), and redis-py 8 sends each through layers this
path does not use (a ``SCRIPT EXISTS`` round trip before every pipeline that holds a script,
per-command observability hooks and hash-import checks, argument packing in Python). In the
throughput profile those layers were the largest single cost of a deletion. This sends
``EVALSHA`` commands packed by hiredis in C, reads one reply each, and loads a script only when
Redis answers ``NOSCRIPT``.

What it keeps from redis-py: the client's connection pool (so Sentinel's primary lookup, health
checks and ``READONLY``-means-reconnect still apply) and the client's retry policy (a connection
lost mid-call is retried on a new connection, as redis-py retries a command). Every caller's
scripts are safe to repeat, which is what makes that retry harmless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
import redis
from redis.exceptions import NoScriptError, ResponseError

Arg = str | int | float
#: One script call: the script's name, its keys, its arguments.
Call = tuple[str, Sequence[Arg], Sequence[Arg]]

__all__ = ["Arg", "Call", "LuaScripts", "RegisteredScripts", "scripts_for"]


class LuaScripts:
    """Named Lua scripts of one Redis client, called alone or many in one round trip.

    Thread-safe: each call takes its own connection from the client's pool.
    """

    def __init__(self, client: redis.Redis, sources: Mapping[str, str]) -> None:
        self.client = client
        self._sources = dict(sources)
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self._sources.items()}  # noqa: S324 - Redis names scripts by SHA-1

    def call(self, name: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run one script; its reply (an error reply is raised)."""
        return self.run([(name, keys, args)])[0]

    def run(self, calls: Sequence[Call], *, transaction: bool = False, then: Sequence[Arg] | None = None) -> list[Any]:
        """Run the calls in order in one write; their replies (the first error reply is raised,
        after every reply is read).

        ``transaction``: inside ``MULTI``/``EXEC`` (all or none are applied). ``then``: one more
        command sent after the calls on the same connection (``WAIT`` must follow the writes it
        waits for there); its reply is appended.
        """
        replies = self._send(calls, transaction, then)
        tail = replies.pop() if then is not None else None
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # a restarted or failed-over Redis: nothing of these ran; load and send them again
            self._load({calls[i][0] for i in missing})
            again = self._send([calls[i] for i in missing], transaction, then)
            tail = again.pop() if then is not None else None
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        if then is not None:
            if isinstance(tail, ResponseError):
                raise tail
            replies.append(tail)
        return replies

    def _load(self, names: set[str]) -> None:
        for name in sorted(names):
            self.client.script_load(self._sources[name])

    def _send(self, calls: Sequence[Call], transaction: bool, then: Sequence[Arg] | None) -> list[Any]:
        commands: list[tuple[Arg, ...]] = [
            ("EVALSHA", self._shas[name], len(keys), *keys, *args) for name, keys, args in calls
        ]
        if transaction:
            commands = [("MULTI",), *commands, ("EXEC",)]
        if then is not None:
            commands.append(tuple(then))
        packed = b"".join(hiredis.pack_command(command) for command in commands)  # type: ignore[arg-type]  # the stub takes a 1-tuple
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            replies: list[Any] = conn.retry.call_with_retry(
                lambda: self._exchange(conn, packed, len(commands)), lambda _error: conn.disconnect()
            )
        finally:
            pool.release(conn)
        if not transaction:
            return replies
        tail = [replies.pop()] if then is not None else []
        for reply in replies[:-1]:  # +OK and QUEUED: an error here means EXEC discarded everything
            if isinstance(reply, ResponseError):
                raise reply
        results = replies[-1]
        if isinstance(results, ResponseError):
            raise results
        return [*results, *tail]

    @staticmethod
    def _exchange(conn: Any, packed: bytes, count: int) -> list[Any]:
        conn.send_packed_command([packed])
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(conn.read_response())
            except ResponseError as error:  # read every reply, or the connection is out of step
                replies.append(error)
        return replies


class RegisteredScripts:
    """The same calls through the client's own ``register_script``: for a client that is not a
    :class:`redis.Redis` with a connection pool (a cluster client, a test's stand-in)."""

    def __init__(self, client: Any, sources: Mapping[str, str]) -> None:
        self._scripts = {name: client.register_script(src) for name, src in sources.items()}

    def call(self, name: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        return self._scripts[name](keys=list(keys), args=list(args))


def scripts_for(client: Any, sources: Mapping[str, str]) -> LuaScripts | RegisteredScripts:
    """:class:`LuaScripts` for a :class:`redis.Redis`, else :class:`RegisteredScripts`."""
    if isinstance(client, redis.Redis):
        return LuaScripts(client, sources)
    return RegisteredScripts(client, sources)
