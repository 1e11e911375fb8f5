"""A real system for integration tests: Redis, the fake API, Celery worker processes, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Cluster:
    redis_url: str
    fake: FakeApi
    tmp: Path
    settings: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFS_CLEANUP_")}
        env.update(
            {
                "SFS_CLEANUP_REDIS_URL": self.redis_url,
                "SFS_CLEANUP_API_ENDPOINT": self.fake.url,
                "SFS_CLEANUP_PROJECT_ID": self.fake.project_id,
                "SFS_CLEANUP_SHARE_IDS": ",".join(self.fake.share_ids),
                "SFS_CLEANUP_AUTH_TOKEN": self.fake.token,
                "SFS_CLEANUP_RATE_LIMIT": "2000",
                "SFS_CLEANUP_RATE_BURST": "50",
                "SFS_CLEANUP_RETRY_BACKOFF_BASE_S": "0.05",
                "SFS_CLEANUP_RETRY_BACKOFF_MAX_S": "0.5",
                "SFS_CLEANUP_LOG_FORMAT": "json",
                "PYTHONPATH": str(ROOT),
            }
        )
        env.update(self.settings)
        env.update(extra)
        return env

    def start_worker(self, name: str, concurrency: int = 1, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(
            name=name, env=self.env(), log_path=self.tmp / f"{name}.log", concurrency=concurrency, **kwargs
        )
        self.workers.append(worker.start())
        return worker.wait_ready()

    def cli(
        self, *args: str, check: bool = False, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "scheduler.cli", *as_script(args)],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
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
        for worker in self.workers:
            worker.stop(grace=20)
        self.workers.clear()


def as_script(args: tuple[str, ...] | list[str]) -> list[str]:
    """A command as a script runs it: a deleting ``purge`` or ``runs replay`` says ``--yes``.

    The refusal without it is tested on its own (``test_consent.py``), calling the CLI directly.
    """
    argv = list(args)
    deletes = (argv[:1] == ["purge"] and "--dry-run" not in argv) or argv[:2] == ["runs", "replay"]
    return [*argv, "--yes"] if deletes and "--yes" not in argv else argv


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
