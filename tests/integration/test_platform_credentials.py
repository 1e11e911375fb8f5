"""Platform credentials end to end: the fake metadata service on 127.0.0.1 hands out temporary
AK/SK and security tokens that its gateway accepts until they expire; the CLI, real Celery
workers and a real Redis purge with them.

* a purge in ``metadata`` mode signs every request with the security token, and keys that live
  seconds are renewed mid-run without a failed task;
* the fleet shares one fetch (with ``SFS_CLEANUP_METADATA_CACHE_KEY``): many processes, one
  request to the metadata service per renewal, not one each;
* no issued SK or security token appears in Redis, the logs or the report.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from tests.support.environment import metadata_auth
from tests.support.secrets import AuthCluster, dump_redis, eligible_tasks, find_leaks, write_manifest
from worker.api.auth import PlatformCredentialProvider

pytestmark = pytest.mark.integration

CACHE_KEY = "FleetCacheKey+/for-the-platform-creds=0001"


@pytest.fixture
def make_cluster(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[AuthCluster, FakeApi]] = []

    def make(config: FakeConfig, cache_key: str | None = CACHE_KEY, **settings: str) -> tuple[AuthCluster, FakeApi]:
        fake = FakeApi(config).start()
        cluster = AuthCluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings=settings)
        cluster.auth = metadata_auth(fake.metadata_url, cache_key)
        started.append((cluster, fake))
        return cluster, fake

    yield make
    for cluster, fake in started:
        cluster.stop()
        fake.stop()


def test_a_purge_signs_with_the_agencys_keys_and_renews_them_mid_run(make_cluster: Any, tmp_path: Path) -> None:
    ttl = 4.0
    cluster, fake = make_cluster(
        FakeConfig(shares=3, tasks_per_share=200, seed=5, deleting_seconds=0.0, metadata_credential_ttl_s=ttl),
        SFS_CLEANUP_RATE_LIMIT="40",  # ~400 deletes at 40/s: a run of ~10 s, a few key lifetimes
        SFS_CLEANUP_RATE_BURST="5",
        SFS_CLEANUP_BATCH_CONCURRENCY="8",
        SFS_CLEANUP_LOG_LEVEL="DEBUG",
    )
    expected = len(eligible_tasks(fake))
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)

    started = time.monotonic()
    result = cluster.cli("purge", "--wait", "--json")
    elapsed = time.monotonic() - started
    report = json.loads(result.stdout.strip().splitlines()[-1])
    stats, meta = fake.stats(), fake.metadata_stats()
    print(f"run {elapsed:.1f} s, key ttl {ttl:g} s: metadata {meta}, 401s {stats['auth_failures']}")

    assert result.returncode == 0, result.stderr
    assert report["status"] == "finished" and report["outcomes"].get("failed", 0) == 0
    assert report["selected"] == expected == report["outcomes"]["deleted"] > 300
    assert sum(report["outcomes"].values()) == report["selected"] and report["pending"] == 0
    # Renewed mid-run (a key lives 4 s, the run more than twice that), before expiry: no 401.
    assert elapsed > 2 * ttl
    assert meta["issued"] >= 2
    assert stats["auth_failures"] == 0
    # Shared: about one fetch per renewal period (2/3 of a lifetime) for the whole fleet (the CLI
    # and two workers of two processes each), not one per process.
    assert meta["issued"] <= elapsed / (ttl * 2 / 3) + 3

    # Nothing the metadata service handed out is readable in Redis, the logs or the report.
    places = {"redis": dump_redis(cluster.redis_url).text, "report": result.stdout, "cli stderr": result.stderr}
    places |= {log.name: log.read_text() for log in tmp_path.glob("*.log")}
    assert any("platform credentials fetched" in text for text in places.values())  # the logs are there
    assert find_leaks(fake.metadata_secrets(), places) == []


def test_the_fleet_shares_one_fetch(make_cluster: Any, redis_url: str) -> None:
    _, fake = make_cluster(FakeConfig(shares=1, tasks_per_share=1, metadata_credential_ttl_s=3600))
    client = redis.Redis.from_url(redis_url)
    http = httpx.Client(timeout=5)
    providers = [
        PlatformCredentialProvider(
            fake.metadata_url, http=http, redis_client=client, cache_key=SecretStr(CACHE_KEY), key_prefix="fleet1"
        )
        for _ in range(12)  # twelve processes of a fleet, starting together
    ]
    got: list[str] = []
    barrier = threading.Barrier(len(providers))

    def start(provider: PlatformCredentialProvider) -> None:
        barrier.wait()
        got.append(provider.credentials().access_key)

    threads = [threading.Thread(target=start, args=(p,)) for p in providers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(got) == 12 and len(set(got)) == 1
    assert fake.metadata_stats()["issued"] == 1
    # What Redis holds cannot be used without the key.
    (key,) = client.keys("fleet1:auth:platform:*")
    stored = client.get(key)
    assert stored is not None and find_leaks(fake.metadata_secrets(), {"redis": stored.decode()}) == []

    # Without the fleet key each process asks for its own (the metadata service is local).
    alone = [PlatformCredentialProvider(fake.metadata_url, http=http, redis_client=client) for _ in range(3)]
    assert len({p.credentials().access_key for p in alone}) == 3
    assert fake.metadata_stats()["issued"] == 4


def test_an_agency_of_another_account_is_assumed_with_the_platform_credentials(make_cluster: Any) -> None:
    cluster, fake = make_cluster(
        FakeConfig(
            shares=2,
            tasks_per_share=120,
            seed=9,
            deleting_seconds=0.0,
            agencies=[{"domain": "other-account", "name": "sfs-cleanup"}],
            agency_credential_ttl_s=4.0,  # renewed mid-run
        ),
        SFS_CLEANUP_RATE_LIMIT="30",
        SFS_CLEANUP_RATE_BURST="5",
    )
    cluster.auth = metadata_auth(fake.metadata_url, CACHE_KEY, agency=(fake.url, "other-account", "sfs-cleanup"))
    expected = len(eligible_tasks(fake))
    cluster.start_worker("w1", concurrency=2)

    result = cluster.cli("purge", "--wait", "--json")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    meta, agency = fake.metadata_stats(), fake.agency_stats()
    print(f"metadata {meta}; agency {agency}")
    assert result.returncode == 0, result.stderr
    assert report["status"] == "finished" and report["outcomes"]["deleted"] == report["selected"] == expected
    # Every API call was signed with the agency's keys; the instance's own keys signed only the
    # assume-role calls to IAM.
    checked = meta["signatures_checked"]
    assert checked["AKAGY"] >= expected and checked["AKTMP"] == agency["requests"]
    assert agency["assumed"]["other-account/sfs-cleanup"] >= 2  # renewed before expiry
    assert fake.stats()["auth_failures"] == 0


def test_an_agency_that_does_not_trust_us_stops_with_one_line_saying_what_to_fix(make_cluster: Any) -> None:
    cluster, fake = make_cluster(FakeConfig(shares=1, tasks_per_share=10, agencies=[]))
    cluster.auth = metadata_auth(fake.metadata_url, CACHE_KEY, agency=(fake.url, "other-account", "sfs-cleanup"))
    result = cluster.cli("purge", "--dry-run")
    assert result.returncode == 2, result.stderr
    assert "IAM refused to assume other-account/sfs-cleanup (HTTP 403)" in result.stderr
    assert find_leaks(fake.metadata_secrets(), {"stderr": result.stderr, "stdout": result.stdout}) == []


def test_an_instance_without_an_agency_stops_the_run_with_one_reason_not_a_failure_per_task(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster, fake = make_cluster(FakeConfig(shares=1, tasks_per_share=60, seed=4, metadata_agency=False))
    manifest = tmp_path / "tasks.jsonl"
    planned = write_manifest(fake, manifest)  # the CLI needs no credentials: the workers do
    cluster.start_worker("w1", concurrency=2)
    result = cluster.cli("purge", "--manifest", str(manifest), "--wait", "--json", timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 4, report
    assert report["status"] == "aborted" and "no agency is bound to this instance" in report["reason"]
    assert fake.stats()["deletes_accepted"] == 0 and planned > 10
    # One refusal is remembered a while by each worker process: no request storm on the metadata service.
    assert fake.metadata_stats()["securitykey_requests"] <= 4
