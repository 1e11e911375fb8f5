"""A real system for integration tests: Redis, the fake API, Celery worker processes, the CLI."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from sandbox.processes import WorkerProcess
from tests.support.environment import ServiceEnv, as_script, run_cli, start_workers, stop_workers

# as_script lives in tests.support.environment; tests import it from here too.
__all__ = ["CLUSTER_SETTINGS", "Cluster", "as_script", "fake_api", "wait_for"]

#: What every cluster's processes run with unless a test says otherwise: a rate limit no test
#: reaches, short retry back-offs, JSON logs (:attr:`Cluster.settings` overrides them).
CLUSTER_SETTINGS: dict[str, str] = {
    "SFS_CLEANUP_RATE_LIMIT": "2000",
    "SFS_CLEANUP_RATE_BURST": "50",
    "SFS_CLEANUP_RETRY_BACKOFF_BASE_S": "0.05",
    "SFS_CLEANUP_RETRY_BACKOFF_MAX_S": "0.5",
    "SFS_CLEANUP_LOG_FORMAT": "json",
}


@dataclass
class Cluster:
    """Redis, the fake API and the workers a test started; the environment of every process of it
    (:class:`~tests.support.environment.ServiceEnv`)."""

    redis_url: str
    fake: FakeApi
    tmp: Path
    settings: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    #: The credentials; None: the fake's token.
    auth: dict[str, str] | None = None

    def service(self) -> ServiceEnv:
        return ServiceEnv.for_fake(
            self.redis_url, self.fake, auth=self.auth, settings={**CLUSTER_SETTINGS, **self.settings}
        )

    def env(self, **extra: str) -> dict[str, str]:
        return self.service().env(**extra)

    def start_worker(self, name: str, concurrency: int = 1, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(
            name=name, env=self.env(), log_path=self.tmp / f"{name}.log", concurrency=concurrency, **kwargs
        )
        self.workers.append(worker)
        start_workers([worker])
        return worker

    def cli(
        self, *args: str, check: bool = False, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = run_cli(self.env(**env), *args, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"sfs-cleanup {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def purge_json(self, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
        result = self.cli("purge", *args, "--json", **env)
        try:
            report = json.loads(result.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError) as exc:
            raise AssertionError(f"no JSON report:\n{result.stdout}\n{result.stderr}") from exc
        return result.returncode, report

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def stop(self) -> None:
        stop_workers(self.workers)
        self.workers.clear()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")


def fake_api(**config: Any) -> Callable[[], Iterator[FakeApi]]:
    """A fixture serving a fake API built from ``FakeConfig(**config)``, fresh for each test.

    Bind it to the name the tests ask for: ``fake = fake_api(shares=2, seed=7)``.
    """

    @pytest.fixture
    def fake() -> Iterator[FakeApi]:
        with FakeApi(FakeConfig(**config)).start() as api:
            yield api

    return fake
