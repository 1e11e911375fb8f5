"""The archive, end to end: a real run (Redis, a deletion worker, the fake API) ends with an archive
target set, a real scheduler process's reconciler archives it (a directory, or a local S3-compatible
server: moto's, on 127.0.0.1), and the run stays readable after its keys expire. With the target down
the run's keys never expire, the exporter shows the failure, and the next pass once it is back
archives the run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from prometheus_client import generate_latest

from sandbox.fakeapi.server import FakeApi
from sandbox.processes import WorkerProcess
from sandbox.redis_server import free_port
from scheduler.jobs import CONTROL_QUEUE, RECONCILE
from scheduler.metrics import registry_for
from tests.support.cluster import Cluster, fake_api, wait_for
from worker.celery_app import create_app
from worker.ledger import Audit
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.integration

fake = fake_api(shares=1, tasks_per_share=8, seed=5, deleting_seconds=0, permanent_error_ratio=0.25)
BUCKET = "sfs-archive"
DAY_S = 86400


class S3Server:
    """moto's S3-compatible server as a child process on a free loopback port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            try:
                return httpx.get(self.url, timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        wait_for(up, 30, what="the S3 server")
        self.client().create_bucket(Bucket=BUCKET)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="archive-test-key",
            aws_secret_access_key="archive-test-secret",
        )


@pytest.fixture(params=["directory", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "directory":
        directory = tmp_path / "archive"
        directory.mkdir()
        yield {"kind": "directory", "dir": directory, "env": {"SFS_CLEANUP_ARCHIVE_URL": directory.as_uri()}}
        return
    server = S3Server(tmp_path / "s3.log").start()
    env = {
        "SFS_CLEANUP_ARCHIVE_URL": f"s3://{BUCKET}/runs",
        "SFS_CLEANUP_ARCHIVE_S3_ENDPOINT": server.url,
        "SFS_CLEANUP_ARCHIVE_S3_REGION": "us-east-1",
        "SFS_CLEANUP_ARCHIVE_S3_ADDRESSING_STYLE": "path",
        "SFS_CLEANUP_ARCHIVE_S3_ACCESS_KEY": "archive-test-key",
        "SFS_CLEANUP_ARCHIVE_S3_SECRET_KEY": "archive-test-secret",
    }
    try:
        yield {"kind": "s3", "server": server, "env": env}
    finally:
        server.stop()


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path, target: dict[str, Any]) -> Iterator[Cluster]:
    # A tiny back-off cap, so the pass after the target is back tries again.
    c = Cluster(
        redis_url=redis_url,
        fake=fake,
        tmp=tmp_path,
        settings={**target["env"], "SFS_CLEANUP_ARCHIVE_RETRY_MAX_S": "1"},
    )
    yield c
    c.stop()


def settings_of(cluster: Cluster) -> Settings:
    env = cluster.env()
    values = {k.removeprefix("SFS_CLEANUP_").lower(): v for k, v in env.items() if k.startswith("SFS_CLEANUP_")}
    return load_settings(**values, _env_file=None)


def start_scheduler(cluster: Cluster) -> WorkerProcess:
    scheduler = WorkerProcess(
        name="sched", env=cluster.env(), log_path=cluster.tmp / "sched.log", app="scheduler", queues=CONTROL_QUEUE
    ).start()
    cluster.workers.append(scheduler)
    return scheduler.wait_ready()


def reconcile(cluster: Cluster) -> None:
    """One reconciler pass in the scheduler process, as beat sends it every minute."""
    create_app(settings_of(cluster)).send_task(RECONCILE, queue=CONTROL_QUEUE)


def run_keys(cluster: Cluster, run_id: str) -> list[str]:
    return sorted(cluster.redis().scan_iter(match=f"sfs:run:{{{run_id}}}*"))


def ended_run(cluster: Cluster, fake: FakeApi, tmp_path: Path) -> dict[str, Any]:
    """A run that finished (with failed tasks), ended 181 days ago: past its 180-day retention."""
    cluster.start_worker("w1", concurrency=2)
    code, report = cluster.purge_json("--yes", "--wait")
    assert code == 3 and report["outcomes"]["failed"] > 0, report
    run_id = report["run_id"]
    client = cluster.redis()
    keys = run_keys(cluster, run_id)
    assert len(keys) > 4
    assert [client.ttl(k) for k in keys] == [-1] * len(keys), "with a target, an ended run gets no expiry"
    assert client.zscore("sfs:archive:pending", run_id) is not None
    client.hset(f"sfs:run:{{{run_id}}}", "finished_at", time.time() - 181 * DAY_S)
    return report


def cli_json(cluster: Cluster, *args: str) -> Any:
    result = cluster.cli(*args, "--json", check=True)
    return json.loads(result.stdout)


def metrics(cluster: Cluster) -> dict[str, float]:
    text = generate_latest(registry_for(settings_of(cluster))).decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^sfs_cleanup_(archive_\w+) (\S+)$", text, re.M)}


def test_a_run_past_retention_is_archived_first_and_read_back_from_its_bundle(
    cluster: Cluster, fake: FakeApi, tmp_path: Path, target: dict[str, Any]
) -> None:
    report = ended_run(cluster, fake, tmp_path)
    run_id = report["run_id"]
    export_before = cluster.cli("audit", "export", run_id, "--format", "jsonl", check=True).stdout
    failed_task = next(json.loads(line) for line in export_before.splitlines() if '"failed"' in line)["task_id"]
    task_before = cli_json(cluster, "audit", "task", failed_task, "--run", run_id)
    assert task_before and task_before[0]["outcome"] == "failed" and task_before[0]["attempts"]

    start_scheduler(cluster)
    reconcile(cluster)
    client = cluster.redis()
    entry = wait_for(lambda: client.hget("sfs:archive:runs", run_id), 60, what="the run in the archive index")
    location = json.loads(entry)["location"]
    if target["kind"] == "directory":
        assert location == (target["dir"] / f"{run_id}.zip").as_uri() and (target["dir"] / f"{run_id}.zip").is_file()
    else:
        assert location == f"s3://{BUCKET}/runs/{run_id}.zip"
        head = target["server"].client().head_object(Bucket=BUCKET, Key=f"runs/{run_id}.zip")
        assert head["ContentLength"] > 0
    # Archived past its retention: its keys go at once (kept what is left of it: nothing).
    wait_for(lambda: not run_keys(cluster, run_id), 30, what="the run's keys expired")
    assert client.zscore("sfs:archive:pending", run_id) is None

    [row] = [r for r in cli_json(cluster, "runs", "list") if r["run_id"] == run_id]
    assert row["in_redis"] is False and row["status"] == "finished"
    assert row["archive"]["state"] == "archived" and row["archive"]["location"] == location
    assert row["outcomes"] == report["outcomes"] and row["selected"] == report["selected"]
    table = cluster.cli("runs", "list", check=True, COLUMNS="400").stdout
    assert run_id in table and "(keys expired)" in table

    assert cluster.cli("audit", "export", run_id, "--format", "jsonl", check=True).stdout == export_before
    assert cli_json(cluster, "audit", "task", failed_task, "--run", run_id) == task_before
    csv = cluster.cli("audit", "export", run_id, "--format", "csv", check=True).stdout
    assert csv.splitlines()[0].startswith("run_id,project_id") and len(csv.splitlines()) == report["selected"] + 1
    assert metrics(cluster)["archive_pending_runs"] == 0 and metrics(cluster)["archive_archived_runs"] == 1
    # The secrets of the archive target never reach the scheduler's log.
    assert "archive-test-secret" not in (cluster.tmp / "sched.log").read_text()


def test_with_the_target_down_nothing_expires_and_the_next_pass_once_it_is_back_archives(
    cluster: Cluster, fake: FakeApi, tmp_path: Path, target: dict[str, Any]
) -> None:
    if target["kind"] == "directory":
        away = target["dir"].with_name("archive-unmounted")
        target["dir"].rename(away)  # the volume is not mounted
    else:
        target["server"].stop()
    report = ended_run(cluster, fake, tmp_path)
    run_id = report["run_id"]
    keys = run_keys(cluster, run_id)
    start_scheduler(cluster)
    client = cluster.redis()

    for tries in (1, 2):
        reconcile(cluster)
        wait_for(lambda t=tries: metrics(cluster).get("archive_failures_total", 0) >= t, 60, what=f"failure {tries}")
        time.sleep(1.1)  # past the back-off cap: the next pass tries again
    seen = metrics(cluster)
    assert seen["archive_pending_runs"] == 1 and seen["archive_failing_runs"] == 1
    assert seen["archive_last_failure_timestamp_seconds"] > time.time() - 120
    assert seen["archive_last_success_timestamp_seconds"] == 0
    # Past its retention, and still every key there, with no expiry.
    assert run_keys(cluster, run_id) == keys
    assert [client.ttl(k) for k in keys] == [-1] * len(keys)
    assert client.hget(f"sfs:run:{{{run_id}}}", "archived_at") is None
    [row] = [r for r in cli_json(cluster, "runs", "list") if r["run_id"] == run_id]
    assert row["in_redis"] is True and row["archive"]["state"] == "pending"
    log = (cluster.tmp / "sched.log").read_text()
    assert "archiving a run failed" in log and "archive-test-secret" not in log

    if target["kind"] == "directory":
        away.rename(target["dir"])
    else:
        target["server"].start()
    reconcile(cluster)
    wait_for(lambda: client.hget("sfs:archive:runs", run_id), 60, what="the run archived once the target is back")
    wait_for(lambda: not run_keys(cluster, run_id), 30, what="the run's keys expired after archiving")
    seen = metrics(cluster)
    assert seen["archive_pending_runs"] == 0 and seen["archive_failing_runs"] == 0
    assert seen["archive_last_success_timestamp_seconds"] > 0
    exported = cluster.cli("audit", "export", run_id, "--format", "jsonl", check=True).stdout.splitlines()
    assert len(exported) == report["selected"]


# One target is enough: the check is the reader's, not the target's.
@pytest.mark.parametrize("target", ["directory"], indirect=True)
def test_a_bundle_changed_in_the_target_is_refused(
    cluster: Cluster, fake: FakeApi, tmp_path: Path, target: dict[str, Any]
) -> None:
    run_id = ended_run(cluster, fake, tmp_path)["run_id"]
    start_scheduler(cluster)
    reconcile(cluster)
    client: redis.Redis = cluster.redis()
    wait_for(lambda: client.hget("sfs:archive:runs", run_id), 60, what="archived")
    wait_for(lambda: not run_keys(cluster, run_id), 30, what="expired")
    path = target["dir"] / f"{run_id}.zip"
    path.write_bytes(path.read_bytes()[:-40])  # truncated in the target
    result = cluster.cli("audit", "export", run_id)
    assert result.returncode == 8 and result.stdout == "", result.stderr
    assert Audit(client).run(run_id) == {}
