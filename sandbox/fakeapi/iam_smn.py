"""The fake's IAM password login and SMN publish: other services behind the same gateway.

Mixed into :class:`~sandbox.fakeapi.service.FakeService`, which owns the state they use; kept
apart so that the task API's module reads on its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from sandbox.fakeapi import auth, smn
from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.faults import FaultDice
from sandbox.fakeapi.responses import GATEWAY_ID_HEADER, json_response, request_id
from sandbox.fakeapi.state import TaskStore
from sandbox.fakeapi.stats import Stats


class IamSmnRoutes:
    """IAM's ``POST /v3/auth/tokens`` and SMN's publish, on the service's state."""

    config: FakeConfig
    store: TaskStore
    stats: Stats
    tokens: auth.TokenRegistry
    dice: FaultDice

    async def _authenticate(self, request: web.Request, rid: str, config: FakeConfig) -> web.Response | None:
        raise NotImplementedError

    # --- IAM ---------------------------------------------------------------------------------

    async def _iam_login(self, request: web.Request) -> web.Response:
        self.stats.iam_requests += 1
        rid = request_id()
        config = self.config
        if config.latency_ms > 0 or config.latency_jitter_ms > 0:
            await asyncio.sleep(self.dice.latency_s(config))
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        result = auth.login(
            body, config=self.config, project_id=self.store.project_id, tokens=self.tokens, now=time.time()
        )
        self.stats.iam_by_status[str(result.status)] += 1
        headers = {GATEWAY_ID_HEADER: rid}
        if result.token is not None:
            self.stats.tokens_issued += 1
            headers["X-Subject-Token"] = result.token
        return json_response(result.status, result.body, headers)

    async def _iam_caller(self, request: web.Request) -> web.Response | None:
        """IAM's calls past the login authenticate like the API's (a token or a signature)."""
        return await self._authenticate(request, request_id(), self.config)

    # --- SMN ----------------------------------------------------------------------------------

    async def _smn_publish(self, request: web.Request) -> web.Response:
        """Authenticated like the task API (same tokens, IAM logins and AK/SK); not throttled or
        faulted with it: SMN is another service behind the same gateway."""
        stats, config = self.stats, self.config
        stats.smn_requests += 1
        rid = request_id()
        refused = await self._authenticate(request, rid, config)
        if refused is not None:
            stats.smn_by_status[str(refused.status)] += 1
            return refused
        if stats.smn_requests <= config.smn_fail_first:
            result = smn.system_error(rid)
        else:
            try:
                body: Any = await request.json()
            except ValueError:
                body = None
            result = smn.publish(
                path_project=request.match_info["project_id"],
                topic_urn=request.match_info["topic_urn"],
                body=body,
                project_id=self.store.project_id,
                region=config.region,
                request_id=rid,
            )
        stats.smn_by_status[str(result.status)] += 1
        if result.record is not None:
            how = "token" if "X-Auth-Token" in request.headers else "aksk" if config.auth_required else "none"
            stats.smn_published.append(result.record | {"at": time.time(), "auth": how})
        return json_response(result.status, result.body, {GATEWAY_ID_HEADER: rid})
