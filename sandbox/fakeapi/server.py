"""Running the fake: in a daemon thread of the caller (:class:`FakeApi`), or blocking (:func:`serve`).

Both listen on a loopback address only. The thread form shares the caller's GIL, which is fine
for tests; benchmarks use :class:`sandbox.fakeapi.process.FakeApiProcess` instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from sandbox.fakeapi import seed
from sandbox.fakeapi.config import ConfigError, FakeConfig, apply_patch, is_loopback
from sandbox.fakeapi.seed import Inventory
from sandbox.fakeapi.service import FakeService

T = TypeVar("T")
_BACKLOG = 2048  # benchmarks open hundreds of connections at once


def build_inventory(config: FakeConfig, now: datetime | None = None) -> Inventory:
    """The inventory a config describes: its seed file, else tasks generated from its seed."""
    project_id = config.project_id or seed.project_id_for(config.seed)
    if config.seed_file:
        return seed.load(config.seed_file, project_id)
    return seed.generate(
        config.shares, config.tasks_per_share, config.seed, now or datetime.now(UTC), project_id=project_id
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on a loopback address; anything else is refused before binding."""
    if not is_loopback(host):
        raise ConfigError([f"host {host!r} is not a loopback address (127.0.0.0/8 or ::1): refused"])
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    return socket.create_server((bare, port), family=family, backlog=_BACKLOG)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _start_site(service: FakeService, sock: socket.socket) -> web.AppRunner:
    # No access log: formatting one line per request would cost a third of the throughput.
    runner = web.AppRunner(service.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=_BACKLOG).start()
    return runner


def serve(
    config: FakeConfig,
    *,
    inventory: Inventory | None = None,
    on_ready: Callable[[str, FakeService], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then close cleanly. ``on_ready`` gets the URL once listening."""
    config.validate()
    service = FakeService(config, inventory or build_inventory(config))
    sock = bind(config.host, config.port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        runner = await _start_site(service, sock)
        try:
            if on_ready is not None:
                on_ready(url_of(sock), service)
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        sock.close()


class FakeApi:
    """The fake on its own event loop in a daemon thread: ``with FakeApi(config) as api: ...``.

    The control methods run on the server's loop, so they see a consistent state.
    """

    def __init__(
        self, config: FakeConfig | None = None, *, inventory: Inventory | None = None, **overrides: Any
    ) -> None:
        base = config or FakeConfig()
        self.config = apply_patch(base, overrides, runtime=False) if overrides else base.validate()
        self.inventory = inventory or build_inventory(self.config)
        self.service = FakeService(self.config, self.inventory)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # --- What tests need to talk to it -----------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def project_id(self) -> str:
        return self.inventory.project_id

    @property
    def share_ids(self) -> list[str]:
        return list(self.inventory.share_ids)

    @property
    def token(self) -> str:
        """An accepted static token (raises if the config has none)."""
        return self.config.tokens[0]

    # --- Life cycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> FakeApi:
        sock = bind(self.config.host, self.config.port)
        self.url = url_of(sock)
        self._thread = threading.Thread(target=self._run, args=(sock,), name="fake-sfs-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the fake API did not start")
        if self._error is not None:
            raise RuntimeError("the fake API failed to start") from self._error
        return self

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            runner = loop.run_until_complete(_start_site(self.service, sock))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            sock.close()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            sock.close()
            loop.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeApi:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- Control, mirroring the /_fake/* routes ---------------------------------------------

    def _on_loop(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None:
            return fn()  # not running: nothing else touches the state

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(10)

    def stats(self) -> dict[str, Any]:
        return self._on_loop(self.service.stats.snapshot)

    def deleted(self) -> list[dict[str, Any]]:
        return self._on_loop(self.service.stats.deleted_records)

    def answered(self) -> list[dict[str, Any]]:
        """Every answered task API call with its request ID (``record_request_ids`` on), oldest first."""
        return self._on_loop(lambda: list(self.service.stats.answered))

    def smn_messages(self) -> list[dict[str, Any]]:
        """Every message SMN accepted, oldest first (as ``GET /_fake/smn``)."""
        return self._on_loop(lambda: list(self.service.stats.smn_published))

    def reset_stats(self) -> None:
        self._on_loop(self.service.stats.reset)

    def configure(self, **patch: Any) -> dict[str, Any]:
        """Apply a runtime patch (as ``POST /_fake/config``); returns the whole new config."""
        result = self._on_loop(lambda: self.service.configure(patch))
        self.config = dataclasses.replace(self.service.config)
        return result

    def tasks(self, share_id: str | None = None, *, project_id: str | None = None) -> list[dict[str, str]]:
        """The current tasks (of one share), of the inventory's project or of ``project_id``."""
        return self._on_loop(lambda: self.service.tasks(share_id, project_id))

    def load_tasks(self, records: list[dict[str, Any]], *, replace: bool = False, project_id: str | None = None) -> int:
        """Add tasks to the inventory's project, or to ``project_id`` (its shares added first)."""
        return self._on_loop(lambda: self.service.load_tasks(records, replace=replace, project_id=project_id))

    def add_share(self, share_id: str, name: str, *, project_id: str | None = None, **fields: str) -> dict[str, Any]:
        """A new file system, listed from now on (``status``, ``enterprise_project_id``...: ``fields``)."""
        record = {"id": share_id, "name": name, **fields}
        return self._on_loop(lambda: self.service.add_share(record, project_id))

    def listed_shares(self, project_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Every project's shares as the listing shows them (one project's with ``project_id``)."""
        return self._on_loop(lambda: self.service.shares.records(project_id))

    @property
    def metadata_url(self) -> str:
        """Where the fake metadata service hands out temporary credentials (SFS_CLEANUP_METADATA_URL)."""
        from sandbox.fakeapi.metadata import SECURITYKEY_PATH

        return self.url + SECURITYKEY_PATH

    def metadata_stats(self) -> dict[str, Any]:
        """How often the metadata service was asked, and how many temporary keys it issued."""
        return self._on_loop(self.service.metadata.snapshot)

    def agency_stats(self) -> dict[str, Any]:
        """IAM's assume-role calls: how many, and keys issued per ``domain/agency``."""
        return self._on_loop(self.service.agency.snapshot)

    def metadata_secrets(self) -> dict[str, str]:
        """Every temporary SK and security token the metadata service handed out, by name."""
        return self._on_loop(self.service.metadata.issued_secrets)

    def revoke_tokens(self) -> int:
        return self._on_loop(self.service.tokens.revoke_all)
