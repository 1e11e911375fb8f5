"""Flower over the real system: basic auth from our settings, workers online, readable jobs, no secrets.

``celery -A worker flower`` is started with ``SFS_CLEANUP_FLOWER_BASIC_AUTH`` in its environment
and no ``--basic-auth`` (see ``worker/flower.py`` for how the option reaches Flower).
"""

from __future__ import annotations

import ast
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from sandbox.redis_server import free_port
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.integration

USER, PASSWORD = "ops", f"pw-{secrets.token_hex(8)}"
TOKEN = f"tok-{secrets.token_hex(16)}"  # the API token the workers use: must never show in Flower
REDIS_PASSWORD = f"rp-{secrets.token_hex(8)}"  # in every process's Redis URL: must never show either


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    config = FakeConfig(shares=2, tasks_per_share=150, seed=9, deleting_seconds=0, latency_ms=1, tokens=[TOKEN])
    with FakeApi(config).start() as api:
        yield api


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    # The test Redis has no password; Redis accepts any for its "default" user then, so the URL can
    # carry one, as in production, and we can look for it in everything Flower shows.
    with_password = redis_url.replace("redis://", f"redis://default:{REDIS_PASSWORD}@", 1)
    c = Cluster(redis_url=with_password, fake=fake, tmp=tmp_path, settings={"SFS_CLEANUP_BATCH_SIZE": "25"})
    yield c
    c.stop()


@pytest.fixture
def flower(cluster: Cluster) -> Iterator[str]:
    """``celery -A worker flower`` on a free loopback port; yields its base URL."""
    port = free_port()
    log_path = cluster.tmp / "flower.log"
    env = cluster.env(SFS_CLEANUP_FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    env = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}  # nothing but our setting
    args = [sys.executable, "-m", "celery", "-A", "worker", "flower", "--address=127.0.0.1", f"--port={port}"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            args, env=env, cwd=cluster.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, f"flower exited:\n{log_path.read_text(errors='replace')[-3000:]}"
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/healthcheck", timeout=2).text == "OK"
        return False

    try:
        wait_for(healthy, timeout=60, interval=0.3, what="Flower's /healthcheck")
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def api(base: str, path: str, **params: Any) -> Any:
    answer = httpx.get(f"{base}{path}", params=params, auth=(USER, PASSWORD), timeout=15)
    answer.raise_for_status()
    return answer.json()


def test_flower_needs_our_credentials_and_shows_workers_and_jobs_without_secrets(
    cluster: Cluster, fake: FakeApi, flower: str
) -> None:
    cluster.start_worker("deleter", concurrency=2)
    cluster.start_worker("control", app="scheduler", queues="sfs.control")

    # The API refuses anyone without the credentials from SFS_CLEANUP_FLOWER_BASIC_AUTH.
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{flower}/api/workers", auth=(USER, "wrong"), timeout=10).status_code == 401
    assert httpx.get(f"{flower}/api/tasks", auth=("admin", PASSWORD), timeout=10).status_code == 401

    online = wait_for(
        lambda: (
            (found := api(flower, "/api/workers", refresh=1, status=1))
            and sum(1 for name, alive in found.items() if alive and name.split("@")[0] in ("deleter", "control")) == 2
            and found
        ),
        timeout=60,
        interval=1,
        what="both workers online in Flower",
    )
    assert {name.split("@")[0] for name, alive in online.items() if alive} >= {"deleter", "control"}

    code, report = cluster.purge_json("--older-than", "7d", "--wait")
    assert code == 0 and report["status"] == "finished", report
    run_id, batches = report["run_id"], report["batches"]
    assert batches >= 4

    def succeeded() -> dict[str, Any] | None:
        tasks: dict[str, Any] = api(flower, "/api/tasks", taskname="sfs.purge_batch")
        mine = {k: t for k, t in tasks.items() if run_id in (t.get("kwargs") or "")}
        done = len(mine) >= batches and all(t["state"] == "SUCCESS" for t in mine.values())
        return mine if done else None

    jobs = wait_for(succeeded, timeout=60, interval=1, what="the run's jobs to show SUCCESS in Flower")

    assert len(jobs) == batches
    seen_batches = set()
    for job in jobs.values():
        assert job["name"] == "sfs.purge_batch" and job["worker"].startswith("deleter@")
        kwargs = ast.literal_eval(job["kwargs"])  # Flower shows kwargsrepr: a Python literal
        assert set(kwargs) == {"run_id", "batch", "share_id", "tasks"}
        assert kwargs["run_id"] == run_id and kwargs["share_id"] in fake.share_ids and 0 < kwargs["tasks"] <= 25
        assert job["args"] == "()"
        seen_batches.add(kwargs["batch"])
    assert seen_batches == set(range(batches))

    # No secret anywhere Flower shows jobs and workers (their configuration and stats included):
    # not the API token, not Flower's password, not the Redis password.
    everything = [
        httpx.get(f"{flower}/api/tasks", auth=(USER, PASSWORD), timeout=15).text,
        httpx.get(f"{flower}/api/workers", params={"refresh": 1}, auth=(USER, PASSWORD), timeout=30).text,
        httpx.get(f"{flower}/api/task/types", auth=(USER, PASSWORD), timeout=15).text,
    ]
    for text in everything:
        for secret in (TOKEN, PASSWORD, REDIS_PASSWORD):
            assert secret not in text, (secret, text[max(0, text.find(secret) - 300) : text.find(secret) + 100])
    assert run_id in everything[0]
    types = api(flower, "/api/task/types")["task-types"]
    assert "sfs.purge_batch" in types

    # /metrics is outside Flower's auth by design (fence it on the network); it counts our jobs.
    metrics = httpx.get(f"{flower}/metrics", timeout=15)
    assert metrics.status_code == 200
    assert 'flower_events_total{task="sfs.purge_batch",type="task-succeeded"' in metrics.text
    assert TOKEN not in metrics.text


def test_a_malformed_auth_setting_stops_flower_with_one_line(cluster: Cluster) -> None:
    env = cluster.env(SFS_CLEANUP_FLOWER_BASIC_AUTH="ops-without-a-password")
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "flower", "--address=127.0.0.1", f"--port={free_port()}"],
        env=env,
        cwd=cluster.tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: SFS_CLEANUP_FLOWER_BASIC_AUTH: the value is not user:password" in result.stderr
    assert "ops-without-a-password" not in result.stderr + result.stdout


def test_basic_auth_values_use_flowers_format() -> None:
    from worker.flower import parse_basic_auth, running_flower

    assert parse_basic_auth("ops:s3cret") == ["ops:s3cret"]
    assert parse_basic_auth("ops:a:b, audit:x") == ["ops:a:b", "audit:x"]  # colons inside a password are fine
    for bad, why in [("", "is empty"), ("ops", "the value is not"), ("ops:", "the value is not"), ("a:b,c", "entry 2")]:
        with pytest.raises(ValueError, match=why):
            parse_basic_auth(bad)
    assert running_flower() is False  # outside `celery ... flower` nothing is touched
