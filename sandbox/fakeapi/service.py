"""The fake SFS Turbo task API and IAM login as an aiohttp application.

Each API call goes through the same steps as at Huawei, as far as they are known: the gateway
(authentication, then the per-user throttle) as the request arrives, then the latency, an
outage if one is on, the path's project and share, and only then the call itself. The gateway
judges a request when it arrives, as the busiest-second figures count it: a throttle applied
after the latency's sleep would also judge this process's own timer jitter. Gateway answers are written with
``X-Request-Id`` and SFS Turbo's with ``X-request-id``, so clients must read headers without
regard to case, as they must in reality.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from sandbox.fakeapi import auth
from sandbox.fakeapi.agency import AgencyService
from sandbox.fakeapi.config import FakeConfig, apply_patch
from sandbox.fakeapi.control import ControlRoutes
from sandbox.fakeapi.credentials import credential_of
from sandbox.fakeapi.faults import Fault, FaultDice
from sandbox.fakeapi.iam_smn import IamSmnRoutes
from sandbox.fakeapi.metadata import MetadataService
from sandbox.fakeapi.responses import (
    API_PREFIX,
    ARRIVED,
    BUSY,
    INTERNAL_ERROR,
    PARAMETER_ERROR,
    SFS_ID_HEADER,
    SHARE_ERRORS,
    TASK_NOT_FOUND,
    DropConnectionError,
    Handler,
    Inner,
    gateway_error,
    int_param,
    json_response,
    request_id,
    sfs_error,
)
from sandbox.fakeapi.seed import Inventory
from sandbox.fakeapi.shares import ShareCatalog
from sandbox.fakeapi.state import DeleteOutcome, TaskStore
from sandbox.fakeapi.stats import DROPPED, Deletion, Stats
from sandbox.fakeapi.tasks import STATUSES, TYPES, Task
from sandbox.fakeapi.window import RateLimiter


class FakeService(ControlRoutes, IamSmnRoutes):
    """All of the fake's state, and its handlers. Lives on one event loop; not thread-safe."""

    def __init__(self, config: FakeConfig, inventory: Inventory) -> None:
        self.config = config.validate()
        self.store = TaskStore(inventory)
        # Every project with tasks, the inventory's first; more come with add_share (several
        # projects, or accounts, behind one regional endpoint).
        self.projects: dict[str, TaskStore] = {self.store.project_id: self.store}
        self.shares = ShareCatalog(inventory.project_id, inventory.share_ids)
        self.metadata = MetadataService(lambda: self.config)
        self.agency = AgencyService(lambda: self.config, self.metadata, self._iam_caller)
        self.stats = Stats()
        self.tokens = auth.TokenRegistry()
        self.dice = FaultDice(config.fault_seed)
        self.limiter = RateLimiter()

    # --- Control (the /_fake/* routes call these; so does FakeApi, on the loop) ------------

    def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        new = apply_patch(self.config, patch)
        if new.fault_seed != self.config.fault_seed:
            self.dice.reseed(new.fault_seed)
        self.config = new
        return new.to_dict()

    def info(self) -> dict[str, Any]:
        return {
            "project_id": self.store.project_id,
            "share_ids": self.store.share_ids,
            "region": self.config.region,
            "tokens": list(self.config.tokens),
        }

    def tasks(self, share_id: str | None = None, project_id: str | None = None) -> list[dict[str, str]]:
        store = self._project(project_id)
        store.expire(time.time())
        return store.records(share_id)

    def load_tasks(self, records: list[dict[str, Any]], *, replace: bool = False, project_id: str | None = None) -> int:
        return self._project(project_id).add((Task.from_record(record) for record in records), replace=replace)

    def add_share(self, record: dict[str, Any], project_id: str | None = None) -> dict[str, Any]:
        """A new file system (listed from now on, and able to hold tasks), in any project."""
        project = project_id or self.store.project_id
        share = self.shares.add(project, record)
        store = self.projects.get(project)
        if store is None:
            store = self.projects[project] = TaskStore(Inventory(project_id=project))
        store.shares.setdefault(share.id, {})
        return share.to_api()

    def _project(self, project_id: str | None) -> TaskStore:
        if project_id is None:
            return self.store
        store = self.projects.get(project_id)
        if store is None:
            raise KeyError(f"unknown project {project_id!r}")
        return store

    # --- The application -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        add = app.router.add_route
        add("GET", "/v1/{project_id}/sfs-turbo/shares/detail", self._api(self._list_shares))
        add("GET", API_PREFIX + "/tasks", self._api(self._list))
        add("GET", API_PREFIX + "/task/{task_id}", self._api(self._show))
        add("DELETE", API_PREFIX + "/task/{task_id}", self._api(self._delete))
        add("POST", API_PREFIX + "/task", self._api(self._create))
        add("POST", "/v3/auth/tokens", self._iam_login)
        self.metadata.add_routes(app)
        self.agency.add_routes(app)
        add("POST", "/v2/{project_id}/notifications/topics/{topic_urn}/publish", self._smn_publish)
        add("GET", "/_fake/stats", self._c_stats)
        add("POST", "/_fake/reset_stats", self._c_reset_stats)
        add("GET", "/_fake/config", self._c_config)
        add("POST", "/_fake/config", self._c_config)
        add("GET", "/_fake/tasks", self._c_tasks)
        add("POST", "/_fake/tasks", self._c_tasks)
        add("GET", "/_fake/deleted", self._c_deleted)
        add("GET", "/_fake/info", self._c_info)
        add("POST", "/_fake/revoke_tokens", self._c_revoke)
        add("GET", "/_fake/smn", self._c_smn)
        add("GET", "/_fake/shares", self._c_shares)
        add("POST", "/_fake/shares", self._c_shares)
        # Last: anything else is the gateway's "no such API", whatever the method.
        add("*", "/{tail:.*}", self._api(self._no_such_api, gateway=False))
        return app

    def _api(self, inner: Inner, *, gateway: bool = True) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            stats = self.stats
            method = request.method
            arrived = time.time()
            ARRIVED.set(arrived)
            stats.arrive(method, time.monotonic(), arrived)
            rid = request_id()
            try:
                response = await self._pipeline(request, inner, rid, gateway)
            except DropConnectionError:
                stats.answer(method, DROPPED)
                if request.transport is not None:
                    request.transport.abort()
                # Never written: the transport is gone; aiohttp drops it quietly.
                return web.Response(status=204)
            except BaseException:
                stats.answer(method, "error")
                raise
            stats.answer(method, response.status)
            if self.config.record_request_ids:
                task_id = request.match_info.get("task_id")
                stats.answered.append({"method": method, "task_id": task_id, "status": response.status, "rid": rid})
            return response

        return handle

    async def _pipeline(self, request: web.Request, inner: Inner, rid: str, gateway: bool) -> web.Response:
        config = self.config
        if gateway:
            refused = await self._gateway(request, rid, config)
            if refused is not None:
                return refused
        if config.latency_ms > 0 or config.latency_jitter_ms > 0:
            await asyncio.sleep(self.dice.latency_s(config))
            config = self.config  # a patch may have landed while this request slept
        if gateway and config.outage_active(time.time()):
            self.stats.injected["outage"] += 1
            if config.outage_status == 500:
                return sfs_error(500, INTERNAL_ERROR, rid)
            return gateway_error(503, "APIGW.0201", "Backend unavailable", rid)
        return await inner(request, rid)

    async def _authenticate(self, request: web.Request, rid: str, config: FakeConfig) -> web.Response | None:
        """The gateway's refusal of the request's credentials, if it refuses them."""
        if not config.auth_required:
            return None
        headers = request.headers
        signed = "Authorization" in headers and "X-Auth-Token" not in headers
        body = await request.read() if signed and request.body_exists else b""
        url = request.rel_url
        refusal = auth.authenticate(
            config=config,
            tokens=self.tokens,
            temporary=self.metadata,
            method=request.method,
            raw_path=url.raw_path,
            raw_query=url.raw_query_string,
            headers=headers,
            body=body,
            now=time.time(),
        )
        if refusal is None:
            return None
        self.stats.auth_failures += 1
        return gateway_error(refusal.status, refusal.code, refusal.message, rid)

    async def _gateway(self, request: web.Request, rid: str, config: FakeConfig) -> web.Response | None:
        refused = await self._authenticate(request, rid, config)
        if refused is not None:
            return refused
        now = time.monotonic()
        who = credential_of(request.headers)
        self.stats.credentials.arrive(who, request.match_info.get("project_id"), now)
        rate = config.credential_rates.get(who, config.credential_rate_limit_rps)
        if rate > 0 and not self.stats.credentials.admit(who, now, rate):
            return self._throttled(rid, config, rate)
        if config.rate_limit_rps > 0 and not self.limiter.admit(now, config.rate_limit_rps):
            return self._throttled(rid, config, config.rate_limit_rps)
        return None

    @staticmethod
    def _throttled(rid: str, config: FakeConfig, limit: float) -> web.Response:
        shown = f"{limit:g}"
        headers = {}
        if config.retry_after is not None:
            headers["Retry-After"] = f"{config.retry_after:g}"
        return gateway_error(
            429,
            "APIGW.0308",
            f"The throttling threshold has been reached: policy user over ratelimit,limit:{shown},time:1 second",
            rid,
            headers,
        )

    def _share(self, request: web.Request, rid: str) -> tuple[TaskStore, str, web.Response | None]:
        """The path's project and share, or the answer for an unknown project or share."""
        share_id = request.match_info["share_id"]
        store = self.projects.get(request.match_info["project_id"])
        if store is None:
            return self.store, share_id, sfs_error(400, PARAMETER_ERROR, rid)
        store.expire(time.time())
        if not store.has_share(share_id):
            status, code, message = SHARE_ERRORS[self.config.share_error_style]
            return store, share_id, sfs_error(status, (code, message), rid)
        return store, share_id, None

    # --- The four task calls -----------------------------------------------------------------

    async def _list(self, request: web.Request, rid: str) -> web.Response:
        store, share_id, error = self._share(request, rid)
        if error is not None:
            return error
        config = self.config
        query = request.query
        offset = int_param(query.get("offset"), 0)
        limit = int_param(query.get("limit"), config.default_limit)
        task_type = query.get("type") or None
        status = query.get("status") or None
        if (
            offset is None
            or limit is None
            or offset < 0
            or limit < 1
            or (config.max_limit is not None and limit > config.max_limit)
            or (task_type is not None and task_type not in TYPES)
            or (status is not None and status not in STATUSES)
        ):
            return sfs_error(400, PARAMETER_ERROR, rid)
        page = store.page(share_id, offset, limit, task_type, status)
        count = len(page.tasks) if config.count_is_page_size else page.total
        return json_response(
            200, {"tasks": [task.to_api() for task in page.tasks], "count": count}, {SFS_ID_HEADER: rid}
        )

    async def _list_shares(self, request: web.Request, rid: str) -> web.Response:
        """Every project's file systems, paged like the task listing (an unknown project has none)."""
        config = self.config
        offset = int_param(request.query.get("offset"), 0)
        limit = int_param(request.query.get("limit"), config.default_limit)
        if offset is None or limit is None or offset < 0 or limit < 1:
            return sfs_error(400, PARAMETER_ERROR, rid)
        if config.max_limit is not None and limit > config.max_limit:
            return sfs_error(400, PARAMETER_ERROR, rid)
        shares, total = self.shares.page(request.match_info["project_id"], offset, limit)
        count = len(shares) if config.count_is_page_size else total
        return json_response(
            200, {"shares": [share.to_api() for share in shares], "count": count}, {SFS_ID_HEADER: rid}
        )

    async def _show(self, request: web.Request, rid: str) -> web.Response:
        store, share_id, error = self._share(request, rid)
        if error is not None:
            return error
        task = store.get(share_id, request.match_info["task_id"])
        if task is None:
            return sfs_error(400, TASK_NOT_FOUND, rid)
        return json_response(200, task.to_api(), {SFS_ID_HEADER: rid})

    async def _delete(self, request: web.Request, rid: str) -> web.Response:
        store, share_id, error = self._share(request, rid)
        if error is not None:
            return error
        task_id = request.match_info["task_id"]
        stats, config = self.stats, self.config
        if (share_id, task_id) in store.accepted:
            stats.duplicate_deletes += 1
            stats.duplicate_task_ids.append(task_id)
            # When it came: a test can then tell a DELETE sent after the audit had recorded the
            # task as deleted (a bug) from one whose outcome was not yet written (a crash window).
            stats.duplicates.append(Deletion(share_id, task_id, time.time()))
        fault = self.dice.for_delete(config, share_id, task_id)
        if fault is not None:
            stats.injected[fault.value] += 1
            if fault is Fault.DROP:
                raise DropConnectionError
            if fault is Fault.FAIL_FIRST or fault is Fault.ERROR:
                return sfs_error(500, INTERNAL_ERROR, rid)
            if fault is Fault.BUSY:
                return sfs_error(400, BUSY, rid)
            if fault is Fault.PERMANENT:
                return sfs_error(400, PARAMETER_ERROR, rid)
        task = store.get(share_id, task_id)
        was_doing = task is not None and task.status == "DOING"
        if was_doing and not config.delete_doing:
            return sfs_error(400, BUSY, rid)
        now = time.time()
        outcome = store.delete(share_id, task_id, now, config.deleting_seconds)
        self._count_delete(outcome, Deletion(share_id, task_id, now, ARRIVED.get(now), store.project_id), was_doing)
        if fault is Fault.DROP_AFTER:
            raise DropConnectionError
        if outcome is DeleteOutcome.ACCEPTED:
            return web.Response(status=202, headers={SFS_ID_HEADER: rid})
        return sfs_error(400, TASK_NOT_FOUND, rid)

    def _count_delete(self, outcome: DeleteOutcome, deletion: Deletion, doing: bool) -> None:
        if outcome is DeleteOutcome.ACCEPTED:
            self.stats.deletes_accepted += 1
            self.stats.deleted.append(deletion)
            self.stats.deleted_by_project[deletion.project_id] += 1
            if doing:
                self.stats.doing_deletes += 1

    async def _create(self, request: web.Request, rid: str) -> web.Response:
        store, share_id, error = self._share(request, rid)
        if error is not None:
            return error
        try:
            body = await request.json()
        except ValueError:
            return sfs_error(400, PARAMETER_ERROR, rid)
        if not isinstance(body, dict):
            return sfs_error(400, PARAMETER_ERROR, rid)
        task_type, target = body.get("type"), body.get("src_target")
        prefix = body.get("src_prefix", "")
        if (
            task_type not in TYPES
            or not isinstance(target, str)
            or not target
            or not isinstance(prefix, str)
            or body.get("dest_target", target) != target  # documented: must equal src_target
            or body.get("dest_prefix", prefix) != prefix
        ):
            return sfs_error(400, PARAMETER_ERROR, rid)
        task = store.create(share_id, str(task_type), target, prefix, time.time())
        return json_response(self.config.create_status, {"task_id": task.task_id}, {SFS_ID_HEADER: rid})

    async def _no_such_api(self, request: web.Request, rid: str) -> web.Response:
        return gateway_error(
            404, "APIGW.0101", "The API does not exist or has not been published in the environment", rid
        )
