"""The fake API as a gateway that counts per user: requests, busiest second and 429s per
credential (an AK, or a token's digest), a per-credential throttle, and several projects' tasks
behind one endpoint. Over HTTP on 127.0.0.1, like every other client of the fake."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from sandbox.fakeapi import FakeApi, FakeConfig
from worker.api.signer import AkSkCredentials, sign

pytestmark = pytest.mark.integration

AK, SK = "AKFAKECREDS00001", "fake-creds-secret-0001"
OTHER_PROJECT = "fedcba9876543210fedcba9876543210"
OTHER_SHARE = "0a1b2c3d-0000-4000-8000-00000000000a"


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    config = FakeConfig(
        shares=1,
        tasks_per_share=5,
        seed=3,
        tokens=["token-a", "token-b"],
        aksk={AK: SK},
        credential_rate_limit_rps=5,
        credential_rates={AK: 3},
    )
    with FakeApi(config).start() as api:
        yield api


def token_label(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def test_each_credential_is_counted_and_throttled_on_its_own(fake: FakeApi) -> None:
    path = f"/v1/{fake.project_id}/sfs-turbo/{fake.share_ids[0]}/hpc-cache/tasks"
    started = time.monotonic()
    with httpx.Client(base_url=fake.url, timeout=5) as http:
        a = [http.get(path, headers={"X-Auth-Token": "token-a"}).status_code for _ in range(8)]
        b = [http.get(path, headers={"X-Auth-Token": "token-b"}).status_code for _ in range(2)]
        signed = []
        for _ in range(5):
            request = http.build_request("GET", path)
            sign(request, AkSkCredentials(AK, SecretStr(SK)), fake.project_id)
            signed.append(http.send(request).status_code)
    if time.monotonic() - started > 0.9:
        pytest.skip("15 requests took most of a second: the one-second window cannot be checked exactly")
    # Within one second: token-a gets its 5, token-b is not held back by token-a, the AK its 3.
    assert a == [200] * 5 + [429] * 3 and b == [200, 200] and signed == [200] * 3 + [429] * 2
    seen = fake.stats()["by_credential"]
    assert set(seen) == {token_label("token-a"), token_label("token-b"), AK}  # no token in the stats
    assert seen[token_label("token-a")] | {"by_project": None} == {
        "requests": 8,
        "answered_429": 3,
        "busiest_second": 8,
        "busiest_5s_rps": 1.6,
        "average_rps": seen[token_label("token-a")]["average_rps"],
        "by_project": None,
    }
    assert seen[AK]["by_project"] == {fake.project_id: 5} and seen[AK]["answered_429"] == 2
    assert "token-a" not in str(seen) and SK not in str(seen)


def test_several_projects_serve_tasks_behind_one_endpoint(fake: FakeApi) -> None:
    fake.configure(credential_rate_limit_rps=0.0, credential_rates={})
    ended = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S")
    task = {"share_id": OTHER_SHARE, "task_id": "ab" * 16, "status": "SUCCESS", "type": "export",
            "end_time": ended, "start_time": ended}  # fmt: skip
    fake.add_share(OTHER_SHARE, "hpc-other", project_id=OTHER_PROJECT)
    assert fake.load_tasks([task], project_id=OTHER_PROJECT) == 1
    token = {"X-Auth-Token": "token-a"}
    with httpx.Client(base_url=fake.url, timeout=5) as http:
        other = f"/v1/{OTHER_PROJECT}/sfs-turbo/{OTHER_SHARE}/hpc-cache"
        listed = http.get(other + "/tasks", headers=token).json()
        assert [t["task_id"] for t in listed["tasks"]] == [task["task_id"]]
        # The share is the other project's: under the inventory's project it is unknown.
        elsewhere = f"/v1/{fake.project_id}/sfs-turbo/{OTHER_SHARE}/hpc-cache/tasks"
        assert http.get(elsewhere, headers=token).status_code == 400
        assert http.delete(other + f"/task/{task['task_id']}", headers=token).status_code == 202
    assert [t["status"] for t in fake.tasks(project_id=OTHER_PROJECT)] == ["DELETING"] and len(fake.tasks()) == 5
    stats = fake.stats()
    assert stats["deleted_by_project"] == {OTHER_PROJECT: 1}
    assert fake.deleted()[0]["project_id"] == OTHER_PROJECT
