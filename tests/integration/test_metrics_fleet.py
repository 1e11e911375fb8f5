"""The API metrics of a real fleet: a purge by real worker processes against the fake with 500s
injected, scraped from `sfs-cleanup metrics` over HTTP, must agree with the fake's own counts."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from sandbox.redis_server import free_port
from tests.support.cluster import Cluster, wait_for
from tests.unit.test_metrics import sample

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    config = FakeConfig(
        shares=2,
        tasks_per_share=250,
        seed=23,
        error_ratio=0.2,  # DELETEs answered 500 SFS.TURBO.0005
        busy_ratio=0.05,  # and 400 SFS.TURBO.0011 (busy, retried)
        deleting_seconds=0.0,
        latency_ms=15,
        latency_jitter_ms=30,
        fault_seed=9,
    )
    with FakeApi(config).start() as api:
        yield api


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings={"SFS_CLEANUP_BATCH_CONCURRENCY": "4"})
    yield c
    c.stop()


@pytest.fixture
def exporter(cluster: Cluster) -> Iterator[str]:
    """`sfs-cleanup metrics` as its own process on a free loopback port; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "metrics", "--address", "127.0.0.1", "--port", str(port)],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: _reachable(url), timeout=30, what="the exporter to serve /metrics")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _reachable(url: str) -> bool:
    try:
        scrape(url)
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def responses_by_status(text: str, operation: str) -> dict[str, float]:
    """Our answers per HTTP status for one operation, summed over error codes."""
    found: dict[str, float] = {}
    pattern = r"^sfs_cleanup_api_responses_total\{([^}]*)\} (\S+)$"
    for labels, value in re.findall(pattern, text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if got["operation"] == operation:
            found[got["status"]] = found.get(got["status"], 0.0) + float(value)
    return found


def test_the_fleets_delete_histogram_and_answers_agree_with_the_server(
    cluster: Cluster, fake: FakeApi, exporter: str
) -> None:
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)

    code, report = cluster.purge_json("--older-than", "7d", "--wait")

    assert code == 0 and report["status"] == "finished", report
    server = {k: float(v) for k, v in fake.stats()["requests_by_method_status"]["DELETE"].items()}
    total = sum(server.values())
    assert server.get("500", 0) > 20 and server.get("202", 0) > 100, server  # the faults really happened
    # Every worker process adds its counts within about a second of the call.
    wait_for(
        lambda: sample(scrape(exporter), "sfs_cleanup_api_request_duration_seconds_count", operation="delete") == total,
        timeout=20,
        what=f"the exporter to count {total:.0f} DELETEs",
    )
    text = scrape(exporter)

    assert responses_by_status(text, "delete") == server
    assert (
        sample(text, "sfs_cleanup_api_responses_total", operation="delete", status="500", error_code="SFS.TURBO.0005")
        == (server["500"])
    )
    # The latencies are real: the fake answers after 15-45 ms, so none is in the 10 ms buckets...
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", operation="delete", le="0.01") == 0.0
    # ...and nearly all are within a second (a loaded CI machine may add a little).
    within_1s = sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", operation="delete", le="1.0")
    assert within_1s is not None and within_1s >= 0.95 * total
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", operation="delete", le="+Inf") == total
    mean = (sample(text, "sfs_cleanup_api_request_duration_seconds_sum", operation="delete") or 0.0) / total
    assert 0.015 <= mean < 1.0, mean
    # The worker processes that ran jobs keep their heartbeat (2 workers x 2 pool processes).
    online = sample(text, "sfs_cleanup_workers_online")
    assert online is not None and 1 <= online <= 4, online
    assert sample(text, "sfs_cleanup_up") == 1.0


def test_every_get_is_counted_as_a_show_or_a_list(cluster: Cluster, fake: FakeApi, exporter: str) -> None:
    # Listing (planning) and shows before a DELETE are the API's GETs: together they are the
    # fake's GETs, whichever process sent them.
    cluster.start_worker("w1", concurrency=2)

    code, report = cluster.purge_json("--older-than", "7d", "--wait", SFS_CLEANUP_RECHECK_STATUS="true")

    assert code == 0 and report["status"] == "finished", report
    server = {k: float(v) for k, v in fake.stats()["requests_by_method_status"]["GET"].items()}

    def ours() -> dict[str, float]:
        text = scrape(exporter)
        merged = responses_by_status(text, "list")
        for status, count in responses_by_status(text, "show").items():
            merged[status] = merged.get(status, 0.0) + count
        return merged

    try:
        wait_for(lambda: ours() == server, timeout=20, what="shows and lists to add up to the fake's GETs")
    except TimeoutError:
        assert ours() == server  # shows the difference
    text = scrape(exporter)
    shows = sample(text, "sfs_cleanup_api_request_duration_seconds_count", operation="show")
    assert shows is not None and shows >= report["selected"]  # every task was shown before its DELETE
