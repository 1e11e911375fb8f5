"""Share discovery end to end: the CLI, a real Celery worker, a real Redis and the fake API.

With ``SFS_CLEANUP_SHARE_IDS`` empty a run purges every available share the project lists:
a share created after one run is purged by the next with no settings change, an unavailable
one is skipped with its reason in the report, and ``check --api`` shows what a run would take.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from tests.support.cluster import Cluster
from tests.support.seed import old_tasks

pytestmark = pytest.mark.integration

NEW_SHARE = "7d4f5a9e-1c2b-4d3e-8f60-0a1b2c3d4e5f"
FROZEN_SHARE = "9e8d7c6b-5a49-4382-9170-f1e2d3c4b5a6"
OTHER_PROJECT = "fedcba9876543210fedcba9876543210"
DISCOVER = {"SFS_CLEANUP_SHARE_IDS": ""}


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    config = FakeConfig(shares=3, tasks_per_share=40, seed=11, deleting_seconds=0.0)
    with FakeApi(config).start() as api:
        yield api


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    # Pages of 2: three shares and more take several pages of the share listing.
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings={"SFS_CLEANUP_LIST_PAGE_SIZE": "2"})
    yield c
    c.stop()


def eligible(fake: FakeApi, share_id: str) -> int:
    cutoff = datetime.now(UTC) - timedelta(days=7)
    count = 0
    for task in fake.tasks(share_id):
        end = task.get("end_time") or ""
        try:
            ended = datetime.fromisoformat(end).replace(tzinfo=UTC)
        except ValueError:
            continue
        count += task["status"] in ("SUCCESS", "FAIL") and ended <= cutoff
    return count


def test_a_share_created_after_a_run_is_purged_by_the_next_without_a_settings_change(
    cluster: Cluster, fake: FakeApi
) -> None:
    first_shares = fake.share_ids
    expected = {share: eligible(fake, share) for share in first_shares}
    cluster.start_worker("w1", concurrency=2)

    code, report = cluster.purge_json("--wait", **DISCOVER)
    assert code == 0, report
    assert report["status"] == "finished"
    assert report["selected"] == sum(expected.values()) > 0
    assert report["outcomes"]["deleted"] == report["selected"]
    assert report["plan"]["discovery"] == {"found": 3, "selected": 3, "not_matching": {}}
    assert report["source"].startswith("live:discovered:")
    assert all(eligible(fake, share) == 0 for share in first_shares)

    # Tomorrow's file system: created, filled, and never named in any setting.
    fake.add_share(NEW_SHARE, "share-new")
    fake.load_tasks(old_tasks(NEW_SHARE, 7))
    code, report = cluster.purge_json("--wait", **DISCOVER)
    assert code == 0, report
    assert report["selected"] == 7 and report["outcomes"]["deleted"] == 7
    assert report["plan"]["discovery"]["found"] == 4
    assert fake.tasks(NEW_SHARE) == []
    assert sum(report["outcomes"].values()) == report["selected"] and report["pending"] == 0


def test_an_unavailable_share_is_skipped_with_its_reason_and_nothing_is_sent_to_it(
    cluster: Cluster, fake: FakeApi
) -> None:
    fake.add_share(FROZEN_SHARE, "share-frozen", status="800")
    fake.load_tasks(old_tasks(FROZEN_SHARE, 5))
    fake.add_share(NEW_SHARE, "scratch-1")  # available, but not matching the pattern below
    fake.load_tasks(old_tasks(NEW_SHARE, 3))
    fake.add_share("1a2b3c4d-0000-4000-8000-00000000abcd", "share-elsewhere", project_id=OTHER_PROJECT)

    code, report = cluster.purge_json("--dry-run", SFS_CLEANUP_SHARE_NAME_PATTERN="share-*", **DISCOVER)
    assert code == 0, report
    plan = report["plan"]
    assert plan["skipped_shares"] == {
        FROZEN_SHARE: {"name": "share-frozen", "reason": "status 800 (FROZEN), not 200 (ACTIVE)"}
    }
    assert plan["discovery"] == {"found": 5, "selected": 3, "not_matching": {"name does not match the pattern": 1}}
    assert FROZEN_SHARE not in report["source"] and NEW_SHARE not in report["source"]
    rows = [json.loads(x) for x in cluster.cli("audit", "export", report["run_id"], check=True).stdout.splitlines()]
    assert rows and {row["share_id"] for row in rows} == set(fake.share_ids)


def test_check_api_lists_the_shares_a_run_would_find(cluster: Cluster, fake: FakeApi) -> None:
    fake.add_share(FROZEN_SHARE, "share-frozen", status="800")
    result = cluster.cli("check", "--api", "--json", **DISCOVER)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    discovery = found["discovery"]
    assert discovery["selected_shares"] == {share: f"share-{n}" for n, share in enumerate(fake.share_ids)}
    assert discovery["skipped_shares"] == {
        FROZEN_SHARE: {"name": "share-frozen", "reason": "status 800 (FROZEN), not 200 (ACTIVE)"}
    }
    assert set(found["shares"]) == set(fake.share_ids)  # each one lists

    text = cluster.cli("check", "--api", **DISCOVER)
    assert text.returncode == 0, text.stderr
    assert f"share {FROZEN_SHARE} (share-frozen): skipped: status 800 (FROZEN)" in text.stdout
    assert f"share {fake.share_ids[0]} (share-0): selected" in text.stdout
