"""What every command needs, built once from the settings: Redis, the audit, the Celery app."""

from __future__ import annotations

import atexit
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from celery import Celery

from worker.api.client import ClientConfig, SfsTurboClient
from worker.ledger import Audit
from worker.ledger.layout import check_layout
from worker.ratelimit import FleetLimiter
from worker.redisconn import connect
from worker.runtime import audit_key_of, retention_of
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.apimetrics import ApiStats


@dataclass
class Context:
    settings: Settings
    # Inside a worker, the app already running: its connections and configuration are reused
    # instead of building a second app for every trigger.
    celery: Celery | None = field(default=None, repr=False)
    _api_stats: ApiStats | None = field(default=None, repr=False)

    @functools.cached_property
    def redis(self) -> redis.Redis:
        return connect(self.settings)

    @functools.cached_property
    def audit(self) -> Audit:
        audit = Audit(
            self.redis,
            prefix=self.settings.key_prefix,
            retention_s=retention_of(self.settings),
            audit_key=audit_key_of(self.settings),
        )
        check_layout(self.redis, audit.keys)  # a CLI or scheduler of another key layout stops here
        return audit

    @functools.cached_property
    def app(self) -> Celery:
        if self.celery is not None:
            return self.celery
        from worker.celery_app import create_app

        return create_app(self.settings)

    def limiter(self, settings: Settings | None = None) -> FleetLimiter:
        """The fleet limiter of the settings' project and endpoint (or of a target's settings)."""
        settings = settings or self.settings
        settings.require_api()
        return FleetLimiter.from_settings(self.redis, settings)

    def client(self, settings: Settings | None = None, target: str | None = None) -> SfsTurboClient:
        """An API client for listing, paced by the fleet-wide limiter like the workers' deletes;
        ``settings``: a target's (``worker.targets``), with its endpoint, project, auth and bucket;
        ``target``: its name, a label of the API metrics."""
        from worker.api.auth import build_auth

        settings = settings or self.settings
        config = ClientConfig.from_settings(settings, max_connections=4)
        return SfsTurboClient(
            config,
            auth=build_auth(settings, self.redis),
            pace=self.limiter(settings).acquire,
            observe=functools.partial(self.api_stats().observe, target=target),
        )

    def api_stats(self) -> ApiStats:
        """This process's share of the fleet's API metrics (listings), written at exit at the latest."""
        if self._api_stats is None:
            from worker.apimetrics import ApiStats

            self._api_stats = ApiStats(self.redis, self.settings.key_prefix)
            atexit.register(self._api_stats.close)
        return self._api_stats
