"""What every command needs, built once from the settings: Redis, the audit, the Celery app."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import redis
from celery import Celery

from worker.audit import Audit
from worker.client import ClientConfig, SfsTurboClient
from worker.ratelimit import FleetLimiter, limiter_key
from worker.settings import Settings


@dataclass
class Context:
    settings: Settings
    _redis: redis.Redis | None = field(default=None, repr=False)

    @functools.cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=5, socket_timeout=30)

    @functools.cached_property
    def audit(self) -> Audit:
        return Audit(self.redis, prefix=self.settings.key_prefix, retention_s=self.settings.retention_days * 86400)

    @functools.cached_property
    def app(self) -> Celery:
        from worker.celery_app import create_app

        return create_app(self.settings)

    def limiter(self) -> FleetLimiter:
        s = self.settings
        s.require_api()
        assert s.project_id is not None and s.api_endpoint is not None
        return FleetLimiter(
            self.redis,
            key=limiter_key(s.key_prefix, s.project_id, s.api_endpoint),
            rate=s.rate_limit,
            burst=s.rate_burst,
            wait_max_s=s.rate_wait_max_s,
            penalty_s=s.throttle_penalty_s,
        )

    def client(self) -> SfsTurboClient:
        """An API client for listing, paced by the fleet-wide limiter like the workers' deletes."""
        from worker.auth import build_auth

        config = ClientConfig.from_settings(self.settings, max_connections=4)
        return SfsTurboClient(config, auth=build_auth(self.settings, self.redis), pace=self.limiter().acquire)
