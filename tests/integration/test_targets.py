"""Many projects, regions and accounts in one run (``SFS_CLEANUP_TARGETS_FILE``), end to end:
the CLI, real Celery workers, a real Redis, and two fake API servers on 127.0.0.1 as two regions.

Three targets: two regions of one account (its AK/SK from environment variables, shares found by
discovery), and another account's project reached through an agency assumed with the instance's
platform credentials (the fake metadata service and IAM). Each target has its own limiter bucket
at its own rate; the fakes count and throttle per credential, as the gateway does per user.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from tests.support.environment import metadata_auth
from tests.support.secrets import AuthCluster, dump_redis, find_leaks
from tests.support.seed import old_tasks

pytestmark = pytest.mark.integration

AK, SK = "AKACCOUNTONE0001", "account-one-secret-key-0001"
CACHE_KEY = "FleetCacheKey+/for-the-platform-creds=0002"
OTHER_PROJECT = "fedcba9876543210fedcba9876543210"
OTHER_SHARES = ("0a1b2c3d-0000-4000-8000-00000000000a", "0a1b2c3d-0000-4000-8000-00000000000b")
# The gateway's per-user limit on each server; every target's own rate is below it.
GATEWAY_RPS = 30.0
RATES = {"sg": 20.0, "hk": 15.0, "other": 10.0}


def eligible(fake: FakeApi, project_id: str | None = None) -> int:
    cutoff = datetime.now(UTC) - timedelta(days=7)
    count = 0
    for task in fake.tasks(project_id=project_id):
        try:
            ended = datetime.fromisoformat(task.get("end_time") or "").replace(tzinfo=UTC)
        except ValueError:
            continue
        count += task["status"] in ("SUCCESS", "FAIL") and ended <= cutoff
    return count


def region(seed: int, **config: Any) -> FakeConfig:
    return FakeConfig(
        shares=2,
        tasks_per_share=45,
        seed=seed,
        deleting_seconds=0.0,
        aksk={AK: SK},
        credential_rate_limit_rps=GATEWAY_RPS,
        **config,
    )


@pytest.fixture
def regions() -> Iterator[tuple[FakeApi, FakeApi]]:
    one = FakeApi(region(31, region="ap-southeast-1", agencies=[{"domain": "other-account", "name": "sfs-cleanup"}]))
    two = FakeApi(region(32, region="ap-east-1"))
    with one.start(), two.start():
        # The other account's project, in the first region: two shares found by listing them.
        for n, share_id in enumerate(OTHER_SHARES):
            one.add_share(share_id, f"hpc-other-{n}", project_id=OTHER_PROJECT)
            one.load_tasks(old_tasks(share_id, 30), project_id=OTHER_PROJECT)
        yield one, two


def targets_file(path: Path, one: FakeApi, two: FakeApi) -> Path:
    env = {"env": {"access_key": "ACCOUNT_ONE_AK", "secret_key": "ACCOUNT_ONE_SK"}}
    targets = [
        {"name": "sg", "region": "ap-southeast-1", "endpoint": one.url, "project_id": one.project_id,
         "credentials": env, "rate": RATES["sg"], "burst": 1},
        {"name": "hk", "region": "ap-east-1", "endpoint": two.url, "project_id": two.project_id,
         "credentials": env, "rate": RATES["hk"], "burst": 1},
        {"name": "other", "region": "ap-southeast-1", "endpoint": one.url, "project_id": OTHER_PROJECT,
         "credentials": {"assume": {"domain": "other-account", "agency": "sfs-cleanup", "iam_endpoint": one.url}},
         "name_pattern": "hpc-other-*", "rate": RATES["other"], "burst": 1},
    ]  # fmt: skip
    path.write_text(json.dumps({"targets": targets}))  # JSON is YAML
    return path


def test_three_targets_in_one_run_each_within_its_own_limit(
    redis_url: str, tmp_path: Path, regions: tuple[FakeApi, FakeApi]
) -> None:
    one, two = regions
    expected = {"sg": eligible(one), "hk": eligible(two), "other": eligible(one, OTHER_PROJECT)}
    assert expected["other"] == 60 and min(expected.values()) > 40
    cluster = AuthCluster(
        redis_url=redis_url,
        fake=one,
        tmp=tmp_path,
        settings={
            "SFS_CLEANUP_TARGETS_FILE": str(targets_file(tmp_path / "targets.yaml", one, two)),
            "ACCOUNT_ONE_AK": AK,
            "ACCOUNT_ONE_SK": SK,
            "SFS_CLEANUP_BATCH_SIZE": "25",
            "SFS_CLEANUP_BATCH_CONCURRENCY": "4",
            "SFS_CLEANUP_RATE_RAMP_S": "0",
        },
    )
    cluster.auth = metadata_auth(one.metadata_url, CACHE_KEY)
    try:
        cluster.start_worker("w1", concurrency=3)
        cluster.start_worker("w2", concurrency=3)
        result = cluster.cli("purge", "--wait", "--json", timeout=180)
    finally:
        cluster.stop()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    stats_one, stats_two = one.stats(), two.stats()
    print(
        json.dumps({"targets": report["targets"], "one": stats_one["by_credential"], "two": stats_two["by_credential"]})
    )

    # One report, broken down by target, every outcome adding up per target and in total.
    assert report["status"] == "finished" and report["pending"] == 0
    per_target = report["targets"]
    assert set(per_target) == {"sg", "hk", "other"}
    for name, row in per_target.items():
        assert row["planned"] == expected[name], name
        assert sum(row["outcomes"].values()) == row["selected"] == row["planned"] + row["rejected"], name
        assert row["outcomes"].get("deleted") == row["planned"], (name, row)
        assert row["discovery"]["selected"] == 2, (name, row["discovery"])
    assert report["selected"] == sum(row["selected"] for row in per_target.values()) == sum(expected.values())
    assert sum(report["outcomes"].values()) == report["selected"] == report["outcomes"]["deleted"]

    # The export: one row per task, with its target and that target's project.
    export = cluster.cli("audit", "export", report["run_id"], "--format", "csv", check=True).stdout
    rows = list(csv.DictReader(io.StringIO(export)))
    projects = {"sg": one.project_id, "hk": two.project_id, "other": OTHER_PROJECT}
    assert len(rows) == report["selected"] and all(r["project_id"] == projects[r["target"]] for r in rows)
    assert Counter(r["target"] for r in rows if r["outcome"] == "deleted") == expected

    # The evidence bundle: its report broken down by target, each task's row with its target.
    bundle = tmp_path / "run.zip"
    cluster.cli("audit", "bundle", report["run_id"], "-o", str(bundle), check=True)
    with zipfile.ZipFile(bundle) as archive:
        assert json.loads(archive.read("report.json"))["targets"] == per_target
        task_rows = [json.loads(line) for line in archive.read("tasks.jsonl").splitlines()]
    assert Counter(r["target"] for r in task_rows) == expected
    # The bundle and the audit chain check out (a run over targets is chained like any other).
    cluster.cli("audit", "verify", "--bundle", str(bundle), check=True)
    cluster.cli("audit", "verify", report["run_id"], check=True)

    # The fakes' own count of deletions per project equals the audit's.
    deleted_one, deleted_two = stats_one["deleted_by_project"], stats_two["deleted_by_project"]
    assert deleted_one == {
        one.project_id: per_target["sg"]["outcomes"]["deleted"],
        OTHER_PROJECT: per_target["other"]["outcomes"]["deleted"],
    }
    assert deleted_two == {two.project_id: per_target["hk"]["outcomes"]["deleted"]}
    assert stats_one["duplicate_deletes"] == stats_two["duplicate_deletes"] == 0

    # Each credential went only to its own projects, each within its target's rate, no 429 storm.
    by_one, by_two = stats_one["by_credential"], stats_two["by_credential"]
    assert set(by_one[AK]["by_project"]) == {one.project_id}
    assert set(by_two) == {AK} and set(by_two[AK]["by_project"]) == {two.project_id}
    (agency_key,) = [who for who in by_one if who != AK]  # the assumed agency's temporary AK
    assert set(by_one[agency_key]["by_project"]) == {OTHER_PROJECT}
    for observed, rate in ((by_one[AK], RATES["sg"]), (by_two[AK], RATES["hk"]), (by_one[agency_key], RATES["other"])):
        # The limiter spaces slots 2 % wider than 1/rate: the steady rate stays under the target's.
        assert observed["average_rps"] <= rate * 1.02, (observed, rate)
        # Over any five seconds too. (Not over any one second: the fake stamps a request when its
        # loop reads it, and on a loaded two-core machine a stalled loop reads several at once;
        # the limiter's own one-second bound is measured at the sender in test_ratelimit.py.)
        assert observed["busiest_5s_rps"] <= rate * 1.2 + 0.2, (observed, rate)
        # The gateway's per-user limit is above every target's rate: no 429 storm.
        assert observed["answered_429"] <= 2, observed

    # The credentials never left the processes that use them.
    places = {"redis": dump_redis(redis_url).text, "report": result.stdout, "stderr": result.stderr}
    places |= {log.name: log.read_text() for log in tmp_path.glob("*.log")}
    secrets = {"SK": SK} | one.metadata_secrets()
    assert find_leaks(secrets, places) == []


def test_a_target_with_the_instances_agency_renews_its_keys_mid_run(redis_url: str, tmp_path: Path) -> None:
    ttl = 4.0
    config = FakeConfig(shares=2, tasks_per_share=150, seed=33, deleting_seconds=0.0, metadata_credential_ttl_s=ttl)
    with FakeApi(config).start() as fake:
        path = tmp_path / "targets.yaml"
        own = {"name": "own", "region": "ap-southeast-1", "endpoint": fake.url, "project_id": fake.project_id}
        path.write_text(json.dumps({"targets": [own | {"credentials": "agency", "rate": 25, "burst": 2}]}))
        cluster = AuthCluster(
            redis_url=redis_url, fake=fake, tmp=tmp_path, settings={"SFS_CLEANUP_TARGETS_FILE": str(path)}
        )
        cluster.auth = metadata_auth(fake.metadata_url, CACHE_KEY)
        expected = eligible(fake)
        try:
            cluster.start_worker("w1", concurrency=2)
            result = cluster.cli("purge", "--wait", "--json", timeout=120)
        finally:
            cluster.stop()
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert result.returncode == 0, result.stderr
        assert report["targets"]["own"]["outcomes"] == {"deleted": expected} and expected > 150
        # At 25/s the run outlasts a key (more than 7 s): renewed mid-run, before expiry (no 401).
        assert report["elapsed_s"] > 1.5 * ttl and fake.metadata_stats()["issued"] >= 2
        assert fake.stats()["auth_failures"] == 0


def test_a_bad_file_or_a_missing_variable_stops_before_anything_is_planned_or_sent(
    redis_url: str, tmp_path: Path
) -> None:
    with FakeApi(FakeConfig(shares=1, tasks_per_share=20, aksk={AK: SK})).start() as fake:
        path = tmp_path / "targets.yaml"
        cluster = AuthCluster(
            redis_url=redis_url, fake=fake, tmp=tmp_path, settings={"SFS_CLEANUP_TARGETS_FILE": str(path)}
        )
        good = {"name": "sg", "region": "ap-southeast-1", "endpoint": fake.url, "project_id": fake.project_id}
        env = {"env": {"access_key": "ACCOUNT_ONE_AK", "secret_key": "ACCOUNT_ONE_SK"}}

        path.write_text(json.dumps({"targets": [good | {"credentials": env, "rate": -1}]}))
        result = cluster.cli("purge", "--dry-run")
        assert result.returncode == 2
        assert result.stderr.strip() == f"error: {path}: target 'sg': rate: Input should be greater than 0"

        path.write_text(json.dumps({"targets": [good | {"credentials": env}]}))
        result = cluster.cli("purge", "--dry-run", ACCOUNT_ONE_AK=AK)  # the SK's variable is missing
        assert result.returncode == 2
        assert "target 'sg': credentials.env.secret_key: $ACCOUNT_ONE_SK is not set in this process" in result.stderr
        checked = cluster.cli("targets", "check", "--json", ACCOUNT_ONE_AK=AK)
        assert checked.returncode == 2 and json.loads(checked.stdout)["targets"]["sg"]["credentials_resolve"] is False

        assert fake.stats()["requests_total"] == 0  # nothing sent, not even a listing
        assert not cluster.redis().keys("sfs:run:*")  # nothing planned

        result = cluster.cli("purge", "--dry-run", "--json", ACCOUNT_ONE_AK=AK, ACCOUNT_ONE_SK=SK)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        expected = eligible(fake)
        assert report["targets"]["sg"]["outcomes"] == {"would_delete": expected}

        checked = cluster.cli("check", "--api", "--json", ACCOUNT_ONE_AK=AK, ACCOUNT_ONE_SK=SK)
        assert checked.returncode == 0, checked.stderr
        facts = json.loads(checked.stdout)
        assert facts["targets"]["sg"]["credentials_resolve"] is True
        assert facts["shares"] == {share: "lists (sg)" for share in fake.share_ids}

        # The reviewed plan, applied: each task goes to its target again (its project and keys).
        cluster.settings |= {"ACCOUNT_ONE_AK": AK, "ACCOUNT_ONE_SK": SK}
        try:
            cluster.start_worker("w1", concurrency=1)
            applied = cluster.cli("runs", "apply", report["run_id"], "--wait", "--json", timeout=120)
        finally:
            cluster.stop()
        assert applied.returncode == 0, applied.stderr
        done = json.loads(applied.stdout.strip().splitlines()[-1])
        assert done["targets"]["sg"]["outcomes"] == {"deleted": expected} and expected > 5
        assert fake.stats()["deleted_by_project"] == {fake.project_id: expected}
        assert SK not in result.stdout + result.stderr + applied.stdout + dump_redis(redis_url).text


def test_one_cap_for_the_whole_run_across_targets(redis_url: str, tmp_path: Path) -> None:
    with FakeApi(FakeConfig(shares=2, tasks_per_share=40, seed=35)).start() as fake:
        path = tmp_path / "targets.yaml"
        token = {"env": {"token": "FAKE_TOKEN"}}
        base = {"region": "ap-southeast-1", "endpoint": fake.url, "project_id": fake.project_id, "credentials": token}
        first, second = fake.share_ids
        path.write_text(
            json.dumps({"targets": [base | {"name": "a", "shares": [first]}, base | {"name": "b", "shares": [second]}]})
        )
        settings = {"SFS_CLEANUP_TARGETS_FILE": str(path), "FAKE_TOKEN": fake.token}
        cluster = AuthCluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings=settings)
        eligible_tasks = eligible(fake)
        assert eligible_tasks > 30
        result = cluster.cli("purge", "--dry-run", "--json", "--max-deletions", "30")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        per_target = report["targets"]
        assert report["selected"] == 30 == per_target["a"]["planned"] + per_target["b"]["planned"]
        assert per_target["b"]["planned"] < eligible_tasks - per_target["a"]["planned"]  # b got what a left
        assert report["not_selected"]["over_cap"] == eligible_tasks - 30
        assert {name: row["outcomes"] for name, row in per_target.items()} == {
            name: {"would_delete": row["planned"]} for name, row in per_target.items() if row["planned"]
        } | {name: {} for name, row in per_target.items() if not row["planned"]}
