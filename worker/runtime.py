"""Per-process resources of a worker: Redis, the audit, the API client, the fleet limiter, API metrics.

Built lazily in the process that uses them and rebuilt after a fork (an httpx pool shared
across ``fork`` interleaves answers between processes), so a prefork child never inherits
its parent's sockets.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import redis

from worker.api.client import ClientConfig, SfsTurboClient
from worker.apimetrics import ApiStats
from worker.ledger import Audit
from worker.ledger.durable import Durability
from worker.ledger.keys import Keys
from worker.ledger.layout import check_layout
from worker.ledger.retention import Retention
from worker.ratelimit import FleetLimiter
from worker.redisconn import connect
from worker.retry import RetryPolicy
from worker.settings import Settings
from worker.targets import TargetsError, TargetSet, load_targets

_T = TypeVar("_T")


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    audit: Audit
    retry: RetryPolicy
    worker_name: str
    _client: SfsTurboClient | None = None
    _limiter: FleetLimiter | None = None
    _pool: ThreadPoolExecutor | None = None
    _api_stats: ApiStats | None = None
    # Per target of SFS_CLEANUP_TARGETS_FILE: its client and limiter, each built once (lazily).
    _targets: TargetSet | None = None
    _target_clients: dict[str, SfsTurboClient] = field(default_factory=dict, repr=False)
    _target_limiters: dict[str, FleetLimiter] = field(default_factory=dict, repr=False)
    _target_settings: dict[str, Settings] = field(default_factory=dict, repr=False)
    # The first job's threads all ask for the client at once: build each part exactly once.
    _build_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def client(self) -> SfsTurboClient:
        if self._client is None:
            with self._build_lock:
                if self._client is None:
                    self._client = self._build_client(self.settings)
        return self._client

    @property
    def limiter(self) -> FleetLimiter:
        if self._limiter is None:
            with self._build_lock:
                if self._limiter is None:
                    self.settings.require_api()
                    self._limiter = FleetLimiter.from_settings(self.redis, self.settings)
        return self._limiter

    def target_settings(self, name: str) -> Settings:
        """The settings of the named target of the targets file, its credentials resolved here
        (:class:`~worker.targets.TargetsError` or :class:`~worker.api.auth.AuthError` if not).

        Resolved once per process and target (the client and the limiter both need them; a
        secret file is read once), under the build lock like the rest.
        """
        settings = self._target_settings.get(name)
        if settings is None:
            if self._targets is None:
                if not self.settings.targets_file:
                    raise TargetsError(
                        [f"target {name[:80]!r}: the plan names a target and SFS_CLEANUP_TARGETS_FILE is unset"]
                    )
                self._targets = load_targets(self.settings.targets_file)
            settings = self._target_settings[name] = self._targets.get(name).settings(self.settings)
        return settings

    def client_for(self, target: str | None) -> SfsTurboClient:
        """The API client of a batch's target; ``None``: the settings' one project (:attr:`client`)."""
        if target is None:
            return self.client
        return self._per_target(self._target_clients, target, self._build_client)

    def limiter_for(self, target: str | None) -> FleetLimiter:
        """The fleet limiter (bucket) of a batch's target; ``None``: the settings' one (:attr:`limiter`)."""
        if target is None:
            return self.limiter
        return self._per_target(
            self._target_limiters, target, lambda settings: FleetLimiter.from_settings(self.redis, settings)
        )

    def _build_client(self, settings: Settings) -> SfsTurboClient:
        from worker.api.auth import build_auth

        return SfsTurboClient(ClientConfig.from_settings(settings), auth=build_auth(settings, self.redis))

    def _per_target(self, built: dict[str, _T], target: str, build: Callable[[Settings], _T]) -> _T:
        """``built[target]``, built once per process from the target's settings."""
        part = built.get(target)
        if part is None:
            with self._build_lock:
                part = built.get(target)
                if part is None:
                    part = built[target] = build(self.target_settings(target))
        return part

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._build_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.settings.batch_concurrency, thread_name_prefix="sfs-delete")
        return self._pool

    @property
    def api_stats(self) -> ApiStats:
        """This process's API latency and answer counts; its thread also keeps the worker heartbeat."""
        if self._api_stats is None:
            with self._build_lock:
                if self._api_stats is None:
                    stats = ApiStats(self.redis, self.settings.key_prefix, heartbeat_member=self.worker_name)
                    stats.start()  # heartbeat from now on, not only once a call was observed
                    self._api_stats = stats
        return self._api_stats

    def close(self) -> None:
        if self._api_stats is not None:
            self._api_stats.close()  # before the Redis client goes: its last counts need it
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()
        for client in self._target_clients.values():
            client.close()
        self.redis.close()


_lock = threading.Lock()
_runtime: Runtime | None = None
_pid: int | None = None


def redis_client(settings: Settings) -> redis.Redis:
    """A worker process's client: room for every delete thread and the job's own calls."""
    return connect(settings, max_connections=settings.batch_concurrency * 2 + 8)


def get_runtime(settings: Settings) -> Runtime:
    """This process's runtime, built on first use and after every fork."""
    global _runtime, _pid  # noqa: PLW0603 - one runtime per process is the point
    with _lock:
        if _runtime is None or _pid != os.getpid():
            client = redis_client(settings)
            check_layout(client, Keys(settings.key_prefix))  # a process of another layout stops here
            audit = Audit(
                client,
                prefix=settings.key_prefix,
                retention_s=retention_of(settings),
                audit_key=audit_key_of(settings),
            )
            audit.durability = durability_of(settings)
            _runtime = Runtime(
                settings=settings,
                redis=client,
                audit=audit,
                retry=RetryPolicy.from_settings(settings),
                worker_name=f"{socket.gethostname()}:{os.getpid()}",
            )
            # Built now, not on the first API call, so the heartbeat starts with the first job.
            _runtime.api_stats.start()
            _pid = os.getpid()
        return _runtime


def close_runtime() -> None:
    global _runtime  # noqa: PLW0603
    with _lock:
        if _runtime is not None and _pid == os.getpid():
            _runtime.close()
        _runtime = None


def retention_of(settings: Settings) -> Retention:
    """The ledger's retention by kind of run, from the settings (days)."""
    return Retention.days(
        settings.retention_days,
        settings.retention_failed_days,
        settings.retention_dry_run_days,
        archive_first=settings.archive_url is not None,
    )


def durability_of(settings: Settings) -> Durability:
    """How many replicas must hold a write-ahead record or an outcome before it counts."""
    return Durability(settings.redis_min_replicas, settings.redis_wait_timeout_ms)


def audit_key_of(settings: Settings) -> bytes | None:
    """The audit chain's key (``SFS_CLEANUP_AUDIT_KEY``), if set: kept in the process, never sent."""
    return settings.audit_key.get_secret_value().encode() if settings.audit_key else None
