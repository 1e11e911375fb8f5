"""The fake's control routes (``/_fake/*``): what tests and benchmarks read and change at run
time. Not part of the API being faked; kept apart from it so the fake's API stays readable."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sandbox.fakeapi import auth
from sandbox.fakeapi.config import ConfigError, FakeConfig
from sandbox.fakeapi.shares import ShareCatalog
from sandbox.fakeapi.state import TaskStore
from sandbox.fakeapi.stats import Stats


class ControlRoutes:
    """Handlers of ``/_fake/*``, mixed into the service that owns this state."""

    config: FakeConfig
    store: TaskStore
    shares: ShareCatalog
    stats: Stats
    tokens: auth.TokenRegistry

    def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        raise NotImplementedError

    def tasks(self, share_id: str | None = None) -> list[dict[str, str]]:
        raise NotImplementedError

    def load_tasks(self, records: list[dict[str, Any]], *, replace: bool = False) -> int:
        raise NotImplementedError

    def add_share(self, record: dict[str, Any], project_id: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    async def _c_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.snapshot())

    async def _c_reset_stats(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response({"ok": True})

    async def _c_config(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response(self.config.to_dict())
        try:
            patch = await request.json()
            if not isinstance(patch, dict):
                raise ConfigError(["the patch must be a JSON object"])
            return web.json_response(self.configure(patch))
        except ConfigError as exc:
            return web.json_response({"problems": exc.problems}, status=400)
        except ValueError:
            return web.json_response({"problems": ["the body is not JSON"]}, status=400)

    async def _c_tasks(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            share_id = request.query.get("share_id")
            if share_id is not None and not self.store.has_share(share_id):
                return web.json_response({"problems": [f"unknown share {share_id!r}"]}, status=404)
            return web.json_response({"tasks": self.tasks(share_id)})
        try:
            body = await request.json()
            records = body["tasks"]
            added = self.load_tasks(records, replace=bool(body.get("replace", False)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"problems": [f"bad task load: {exc}"]}, status=400)
        return web.json_response({"added": added})

    async def _c_deleted(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.deleted_records())

    async def _c_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.info())

    async def _c_smn(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.stats.smn_published))

    async def _c_revoke(self, request: web.Request) -> web.Response:
        return web.json_response({"revoked": self.tokens.revoke_all()})

    async def _c_shares(self, request: web.Request) -> web.Response:
        """GET: every project's shares (``?project_id=`` for one). POST ``{"project_id"?, "share"}``."""
        if request.method == "GET":
            return web.json_response(self.shares.records(request.query.get("project_id")))
        try:
            body = await request.json()
            added = self.add_share(body["share"], body.get("project_id"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"problems": [f"bad share: {exc}"]}, status=400)
        return web.json_response(added)
