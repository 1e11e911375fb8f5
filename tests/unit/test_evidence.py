"""The evidence bundle never carries a secret: not the credentials of any auth mode, not Redis'
password, not Flower's or the webhook's, even when the ledger holds one an API echoed back."""

from __future__ import annotations

import json
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import pytest
import redis

from scheduler.evidence import members as m
from scheduler.evidence.bundle import write_bundle
from scheduler.evidence.verify import BundleProblemError, verify_bundle
from scheduler.guard import settings_view
from worker.ledger import Attempt, Audit, FinalOutcome, Outcome, RunStatus
from worker.ledger.outcomes import RecordItem
from worker.settings import load_settings

TOKEN = "tok-SECRET-1f2e3d4c5b6a7988"
ACCESS_KEY = "AKSECRETAK7Q2W9E4R"
SECRET_KEY = "sk-SECRET-9a8b7c6d5e4f3a2b1c0d"
SECURITY_TOKEN = "sts-SECRET-4d5e6f7a8b9c"
IAM_PASSWORD = "iam-SECRET-pa55w0rd-x1"
REDIS_PASSWORD = "redis-SECRET-z9y8x7"
FLOWER_PASSWORD = "flower-SECRET-q1w2e3"
WEBHOOK_TOKEN = "hook-SECRET-m4n5b6v7"

AUTH_MODES: dict[str, dict[str, Any]] = {
    "token": {"auth_token": TOKEN},
    "aksk": {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "security_token": SECURITY_TOKEN},
    "iam": {
        "iam_endpoint": "https://iam.example.com",
        "iam_user": "cleanup",
        "iam_password": IAM_PASSWORD,
        "iam_domain": "acme",
    },
}
PROJECT = "0123456789abcdef0123456789abcdef"
SHARE = "77ba6f4b-6365-4895-8dda-bc7142af4dde"


def finished_run(audit: Audit, run_id: str, view: dict[str, str], leaked: str) -> None:
    """A finished run whose ledger holds ``leaked`` where other systems' text goes: an API error
    message and a refused input line."""
    tasks = ["a" * 32, "b" * 32]
    audit.create_run(run_id, {"trigger": "cli", "project_id": PROJECT, "settings_view": json.dumps(view)})
    audit.add_batches(run_id, [(0, SHARE, tasks)])
    audit.add_rejected(run_id, [{"source": "m.jsonl", "line": 3, "reason": "bad", "raw": f'{{"token": "{leaked}"}}'}])
    assert audit.freeze(run_id, 3, batches=1) is RunStatus.RUNNING
    batch = audit.batch(run_id, 0)
    assert batch is not None
    echo = Attempt(1, time.time(), 401, "auth", "rid-1", "APIGW.0301", f"Incorrect token {leaked}")
    audit.record(batch, tasks[0], attempt=echo)
    audit.record(batch, tasks[0], final=FinalOutcome(Outcome.FAILED, time.time(), 1, 401, "APIGW.0301"))
    audit.record(batch, tasks[1], attempt=Attempt(1, time.time(), 202, "deleted", "rid-2"))
    audit.record(batch, tasks[1], final=FinalOutcome(Outcome.DELETED, time.time(), 1, 202, request_id="rid-2"))
    assert audit.status(run_id) is RunStatus.FINISHED


@pytest.mark.parametrize("mode", sorted(AUTH_MODES))
def test_no_secret_of_the_settings_is_anywhere_in_the_bundle(
    redis_client: redis.Redis, tmp_path: Path, mode: str
) -> None:
    settings = load_settings(
        project_id=PROJECT,
        api_endpoint="https://sfs-turbo.example.com",
        share_ids=[SHARE],
        redis_url=f"redis://:{REDIS_PASSWORD}@10.0.0.7:6379/0",
        flower_basic_auth=f"auditor:{FLOWER_PASSWORD}",
        notify_webhook_url=f"https://hooks.example.com/notify?token={WEBHOOK_TOKEN}",
        **AUTH_MODES[mode],
    )
    secrets = [v for v in (*AUTH_MODES[mode].values(), REDIS_PASSWORD, FLOWER_PASSWORD, WEBHOOK_TOKEN) if "SECRET" in v]
    leaked = secrets[0]  # the API echoed this mode's credential into an error message
    audit = Audit(redis_client)
    finished_run(audit, "r-secret", settings_view(settings), leaked)

    path = tmp_path / "evidence.zip"
    write_bundle(audit, settings, "r-secret", path, made_by="auditor")

    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    for secret in secrets:
        assert secret.encode() not in raw, secret
        for name, data in members.items():
            assert secret.encode() not in data, (secret, name)
    # What was masked is said (the row's error message, its attempt's, the refused line), and the
    # rest of the evidence is intact.
    assert json.loads(members[m.BUNDLE])["masked_secrets"] == 3
    assert b"Incorrect token ***" in members[m.TASKS] and b"rid-1" in members[m.TASKS]
    view = json.loads(members[m.SETTINGS])["view"]
    assert view["SFS_CLEANUP_PROJECT_ID"] == PROJECT and view["SFS_CLEANUP_SHARE_IDS"] == SHARE
    assert verify_bundle(path).digest == m.digest(members[m.MANIFEST])


def test_a_large_run_is_bundled_and_verified_in_flat_memory(redis_client: redis.Redis, tmp_path: Path) -> None:
    """20,000 tasks with two attempts each: the rows are ~17 MB of JSON, yet the bundle is written
    and checked holding about one batch at a time."""
    audit, run_id, batches, size = Audit(redis_client), "r-large", 200, 100
    audit.create_run(run_id, {"trigger": "cli", "project_id": PROJECT})
    audit.add_batches(run_id, [(n, SHARE, [f"{n:05d}{i:027d}" for i in range(size)]) for n in range(batches)])
    assert audit.freeze(run_id, batches * size, batches=batches) is RunStatus.RUNNING
    now = time.time()
    for n in range(batches):
        batch = audit.batch(run_id, n)
        assert batch is not None
        items: list[RecordItem] = []
        for t in batch.task_ids:
            items.append(RecordItem(batch, t, Attempt(1, now, 500, "retryable", f"r1-{t}"), bump="retries"))
            items.append(RecordItem(batch, t, Attempt(2, now, 202, "deleted", f"r2-{t}")))
            items.append(RecordItem(batch, t, final=FinalOutcome(Outcome.DELETED, now, 2, 202, request_id=f"r2-{t}")))
        audit.record_many(items, transaction=False)
    assert audit.status(run_id) is RunStatus.FINISHED
    path = tmp_path / "large.zip"

    tracemalloc.start()
    try:
        made = write_bundle(audit, load_settings(), run_id, path, made_by="auditor")
        _, writing = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        checked = verify_bundle(path)
        _, verifying = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with zipfile.ZipFile(path) as z:
        rows_bytes = z.getinfo(m.TASKS).file_size
    assert made.rows == batches * size and rows_bytes > 15_000_000
    assert "selected = 20000 task rows + 0 refused lines = 20000" in checked.checked
    assert writing < rows_bytes / 4 and verifying < rows_bytes / 4, (writing, verifying, rows_bytes)


def test_a_second_member_of_the_same_name_is_caught(redis_client: redis.Redis, tmp_path: Path) -> None:
    """A zip may hold two members of one name and readers take the last: appended after the
    manifest was made, it would otherwise replace the rows unseen by a reader."""
    audit = Audit(redis_client)
    finished_run(audit, "r-twice", {}, "nothing-secret")
    path = tmp_path / "evidence.zip"
    write_bundle(audit, load_settings(), "r-twice", path, made_by="auditor")
    assert verify_bundle(path).checked
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as z:
        z.writestr(m.TASKS, b"{}\n")
    with pytest.raises(BundleProblemError, match=r"member tasks\.jsonl appears more than once"):
        verify_bundle(path)
