"""The purge pipeline end to end: the CLI, real Celery worker processes, a real Redis, the fake API.

Every figure the service reports is checked against the fake's own server-side counts.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from tests.support.cluster import Cluster
from worker.models import parse_time

pytestmark = pytest.mark.integration


def eligible_tasks(fake: FakeApi, older_than: timedelta = timedelta(days=7)) -> set[tuple[str, str]]:
    """What the default policy may delete, computed from the fake's own inventory."""
    cutoff = datetime.now(UTC) - older_than
    found = set()
    for share_id in fake.share_ids:
        for task in fake.tasks(share_id):
            ended = parse_time(task.get("end_time"))
            if task["status"] in ("SUCCESS", "FAIL") and ended is not None and ended <= cutoff:
                found.add((share_id, task["task_id"]))
    return found


def deleted_by_server(fake: FakeApi) -> list[tuple[str, str]]:
    return [(d["share_id"], d["task_id"]) for d in fake.deleted()]


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    config = FakeConfig(
        shares=4,
        tasks_per_share=600,
        seed=11,
        error_ratio=0.2,
        fail_first_k=1,
        fail_first_ratio=0.3,
        deleting_seconds=0.2,
        latency_ms=2,
        fault_seed=5,
    )
    with FakeApi(config).start() as api:
        yield api


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings={"SFS_CLEANUP_BATCH_CONCURRENCY": "8"})
    yield c
    c.stop()


def test_purge_deletes_exactly_the_eligible_tasks_and_the_audit_agrees_with_the_server(
    cluster: Cluster, fake: FakeApi
) -> None:
    expected = eligible_tasks(fake)
    assert len(expected) > 1000
    cluster.start_worker("w1")
    cluster.start_worker("w2")

    code, report = cluster.purge_json("--older-than", "7d", "--wait")

    stats = fake.stats()
    outcomes = report["outcomes"]
    assert report["status"] == "finished", report
    assert code == 0, report
    assert report["selected"] == len(expected)
    assert sum(outcomes.values()) == report["selected"]
    assert outcomes["deleted"] == stats["deletes_accepted"] == len(expected)
    assert outcomes["failed"] == 0
    assert stats["duplicate_deletes"] == 0
    assert set(deleted_by_server(fake)) == expected  # protected, young and running: never a DELETE
    assert report["retries"] > 100  # the 20% of 500s and the first-attempt failures were retried
    assert report["attempts"] == stats["requests_by_method_status"]["DELETE"].get("202", 0) + sum(
        n for status, n in stats["requests_by_method_status"]["DELETE"].items() if status != "202"
    )

    export = cluster.cli("audit", "export", report["run_id"], "--format", "csv", check=True)
    rows = list(csv.DictReader(io.StringIO(export.stdout)))
    assert len(rows) == report["selected"]
    assert {(r["share_id"], r["task_id"]) for r in rows} == expected
    assert all(r["outcome"] == "deleted" and r["request_ids"] for r in rows)
    retried = [r for r in rows if int(r["attempts"]) > 1]
    assert retried and all(len(r["request_ids"].split()) == int(r["attempts"]) for r in retried)


def test_dry_run_sends_no_delete_and_records_would_delete(cluster: Cluster, fake: FakeApi) -> None:
    code, report = cluster.purge_json("--dry-run")
    assert code == 0
    assert report["dry_run"] is True
    assert report["status"] == "finished"
    assert report["outcomes"]["would_delete"] == report["selected"] == len(eligible_tasks(fake))
    assert fake.stats()["requests_by_method_status"].get("DELETE", {}) == {}


def test_a_job_delivered_twice_sends_no_second_delete(cluster: Cluster, fake: FakeApi) -> None:
    cluster.start_worker("w1", concurrency=2)
    code, report = cluster.purge_json("--wait", "--max-deletions", "150")
    assert code == 0 and report["outcomes"]["deleted"] == 150
    before = fake.stats()

    from worker.celery_app import create_app
    from worker.jobnames import PURGE_BATCH
    from worker.settings import load_settings

    app = create_app(load_settings(redis_url=cluster.redis_url, broker_url=cluster.redis_url))
    for batch in range(report["batches"]):
        for _ in range(2):
            app.send_task(PURGE_BATCH, kwargs={"run_id": report["run_id"], "batch": batch}, queue="sfs.delete")
    import time

    time.sleep(3)  # give the redelivered jobs time to (not) act
    after = fake.stats()
    assert after["requests_by_method_status"].get("DELETE") == before["requests_by_method_status"].get("DELETE")
    assert after["duplicate_deletes"] == 0
    shown = json.loads(cluster.cli("runs", "show", report["run_id"], "--json", check=True).stdout)
    assert shown["outcomes"] == report["outcomes"]


def test_protected_tasks_and_shares_get_no_delete(cluster: Cluster, fake: FakeApi) -> None:
    expected = sorted(eligible_tasks(fake))
    protected_share = fake.share_ids[0]
    protected_task = next(t for s, t in expected if s != protected_share)
    cluster.cli("protect", "add", "--share", protected_share, check=True)
    cluster.start_worker("w1", concurrency=2)

    code, report = cluster.purge_json("--wait", "--protect-task", protected_task)

    assert code == 0
    deleted = set(deleted_by_server(fake))
    assert not any(s == protected_share for s, _ in deleted)
    assert all(t != protected_task for _, t in deleted)
    assert report["not_selected"].get("protected_share", 0) > 0
    assert report["not_selected"].get("protected_task", 0) == 1


def test_protection_added_after_planning_wins_at_delete_time(cluster: Cluster, fake: FakeApi) -> None:
    # Plan with no worker running, protect afterwards, then let workers start: the live
    # protection list is read at delete time, so the held tasks end as skipped.
    result = cluster.cli("purge", "--max-deletions", "200", check=True)
    run_id = result.stdout.strip().splitlines()[-1]
    export = cluster.cli("audit", "export", run_id, "--format", "jsonl", check=True)
    planned = [json.loads(line) for line in export.stdout.splitlines()]
    held_task = planned[0]["task_id"]
    held_share = planned[-1]["share_id"]
    cluster.cli("protect", "add", "--task", held_task, "--share", held_share, check=True)
    cluster.start_worker("w1", concurrency=2)

    report = json.loads(cluster.cli("runs", "show", run_id, "--wait", "--json", check=True).stdout)

    assert report["status"] == "finished"
    deleted = set(deleted_by_server(fake))
    assert all(t != held_task for _, t in deleted)
    assert all(s != held_share for s, _ in deleted)
    skipped = sum(1 for p in planned if p["task_id"] == held_task or p["share_id"] == held_share)
    assert report["outcomes"]["skipped"] == skipped
    assert report["outcomes"]["deleted"] == 200 - skipped == fake.stats()["deletes_accepted"]


def test_bad_manifest_lines_are_refused_with_their_line_numbers(
    cluster: Cluster, fake: FakeApi, tmp_path: Path
) -> None:
    good = sorted(eligible_tasks(fake))[:20]
    lines = [json.dumps({"project_id": fake.project_id, "share_id": s, "task_id": t}) for s, t in good[:10]]
    lines.append(json.dumps({"project_id": fake.project_id, "share_id": "../etc", "task_id": "x"}))  # line 11
    lines.append("{not json")  # line 12
    lines += [json.dumps({"project_id": fake.project_id, "share_id": s, "task_id": t}) for s, t in good[10:]]
    lines.append(json.dumps({"project_id": fake.project_id, "share_id": good[0][0], "task_id": "a/b"}))  # line 23
    manifest = tmp_path / "tasks.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    cluster.start_worker("w1", concurrency=2)

    code, report = cluster.purge_json("--manifest", str(manifest), "--older-than", "0s", "--wait")

    assert report["outcomes"]["rejected"] == 3
    assert report["outcomes"]["deleted"] == 20 == fake.stats()["deletes_accepted"]
    assert report["selected"] == 23
    assert code == 0
    rows = [json.loads(x) for x in cluster.cli("audit", "export", report["run_id"], check=True).stdout.splitlines()]
    rejected = sorted(int(r["input_line"]) for r in rows if r["outcome"] == "rejected")
    assert rejected == [11, 12, 23]


def test_a_malformed_job_message_is_refused_and_the_worker_keeps_working(cluster: Cluster, fake: FakeApi) -> None:
    import base64
    import uuid

    r = cluster.redis()
    message_id = str(uuid.uuid4())
    body = base64.b64encode(json.dumps({"not": "a protocol 2 body"}).encode()).decode()
    envelope = {
        "body": body,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"lang": "py", "task": "sfs.purge_batch", "id": message_id},
        "properties": {
            "delivery_tag": message_id,
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "sfs.delete"},
            "priority": 0,
        },
    }
    r.lpush("sfs.delete", json.dumps(envelope))
    worker = cluster.start_worker("w1", concurrency=1)

    code, report = cluster.purge_json("--wait", "--max-deletions", "50")

    assert worker.running
    assert code == 0 and report["outcomes"]["deleted"] == 50 == fake.stats()["deletes_accepted"]
    events = [v for _, v in r.xrange("sfs:events") if v.get("kind") == "job_rejected"]
    assert [e["message_id"] for e in events] == [message_id]
    assert "[args, kwargs, embed]" in events[0]["error"]
