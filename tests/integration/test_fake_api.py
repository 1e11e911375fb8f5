"""The fake SFS Turbo API, checked over real HTTP the way a client (and a user) would see it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from sandbox.fakeapi import FakeApi, FakeApiProcess, FakeConfig, Task, dump, eligible, generate, load, seed
from sandbox.fakeapi.signature import sign_headers
from sandbox.fakeapi.tasks import parse_time

HEX32 = re.compile(r"[0-9a-f]{32}")
AK, SK = "FAKEAK0123456789", "FAKESK-secret"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def raw_header_names(response: httpx.Response) -> list[str]:
    return [name.decode() for name, _ in response.headers.raw]


def error_code(response: httpx.Response) -> str | None:
    body = response.json()
    code = body.get("errCode") or body.get("error_code")
    return None if code is None else str(code)


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeApi]:
    config = FakeConfig(shares=2, tasks_per_share=40, seed=3, deleting_seconds=0.3, aksk={AK: SK})
    with FakeApi(config) as fake:
        yield fake


@pytest.fixture
def client(api: FakeApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers={"X-Auth-Token": api.token}, timeout=5.0) as http:
        yield http


def base(api: FakeApi | FakeApiProcess, share: int = 0) -> str:
    return f"/v1/{api.project_id}/sfs-turbo/{api.share_ids[share]}/hpc-cache"


def finished_task(api: FakeApi, share: int = 0, status: str = "SUCCESS") -> str:
    return next(t["task_id"] for t in api.tasks(api.share_ids[share]) if t["status"] == status)


# --- Inventory (no server) ---------------------------------------------------------------------


def test_generate_is_reproducible_and_realistic() -> None:
    one = generate(shares=3, tasks_per_share=400, seed=11, now=NOW)
    two = generate(shares=3, tasks_per_share=400, seed=11, now=NOW)
    assert [t.to_record() for t in one.tasks] == [t.to_record() for t in two.tasks]
    assert HEX32.fullmatch(one.project_id)
    assert all(re.fullmatch(r"[0-9a-f-]{36}", share) for share in one.share_ids)
    assert len({t.task_id for t in one.tasks}) == 1200 and all(HEX32.fullmatch(t.task_id) for t in one.tasks)
    statuses = {s: sum(t.status == s for t in one.tasks) for s in ("SUCCESS", "FAIL", "DOING", "DELETING")}
    assert statuses["SUCCESS"] > statuses["FAIL"] > statuses["DOING"] > 0 and statuses["DELETING"] > 0
    assert {t.type for t in one.tasks} == {"import", "import_metadata", "preload", "export"}
    ends = [t.end_time for t in one.tasks if t.status in ("SUCCESS", "FAIL")]
    assert 5 <= sum(end is None for end in ends) <= 60  # ~3% have no end time
    assert any(end is not None and end != "" and not end[:1].isdigit() for end in ends)  # e.g. "N/A"
    parsed = [moment for moment in map(parse_time, ends) if moment is not None]
    assert min(parsed) >= NOW - timedelta(days=91) and max(parsed) <= NOW - timedelta(minutes=4)


def test_eligible_counts_per_share_and_never_treats_unknown_times_as_old() -> None:
    tasks = [
        Task("s1", "a" * 32, "import", "SUCCESS", end_time="2025-05-01T00:00:00"),
        Task("s1", "b" * 32, "export", "SUCCESS", end_time="2025-05-01T00:00:00"),
        Task("s1", "c" * 32, "import", "FAIL", end_time="2025-05-31T12:00:00"),  # too recent
        Task("s1", "d" * 32, "import", "SUCCESS", end_time="N/A"),
        Task("s1", "e" * 32, "import", "SUCCESS", end_time=None),
        Task("s2", "f" * 32, "import", "DOING", end_time=""),
    ]
    assert eligible(tasks, ["SUCCESS", "FAIL"], ["import"], timedelta(days=7), NOW) == {"s1": 1, "s2": 0}
    assert eligible(tasks, None, None, 7 * 86400.0, NOW) == {"s1": 2, "s2": 0}


def test_seed_file_round_trip(tmp_path: Path) -> None:
    inventory = generate(shares=2, tasks_per_share=25, seed=5, now=NOW)
    inventory.share_ids.append("00000000-0000-4000-8000-000000000000")  # a share with no tasks
    path = tmp_path / "tasks.jsonl"
    dump(inventory, path)
    loaded = load(path, inventory.project_id)
    assert loaded.share_ids == inventory.share_ids
    assert [t.to_record() for t in loaded.tasks] == [t.to_record() for t in inventory.tasks]
    assert all(json.loads(line).get("share_id") for line in path.read_text().splitlines())


# --- Listing and showing -----------------------------------------------------------------------


@pytest.mark.integration
def test_list_answers_string_fields_a_total_count_and_a_request_id(api: FakeApi, client: httpx.Client) -> None:
    response = client.get(base(api) + "/tasks", params={"limit": 10})
    assert response.status_code == 200
    assert "X-request-id" in raw_header_names(response)
    assert HEX32.fullmatch(response.headers["x-request-id"])
    body = response.json()
    assert body["count"] == 40 and len(body["tasks"]) == 10
    for task in body["tasks"]:
        assert HEX32.fullmatch(task["task_id"])
        assert all(isinstance(value, str) for value in task.values())
        assert {"task_id", "type", "status", "src_target", "dest_target", "message"} <= task.keys()


@pytest.mark.integration
def test_paging_with_offset_and_limit_yields_every_task_once(api: FakeApi, client: httpx.Client) -> None:
    seen: list[str] = []
    offset = 0
    while True:
        page = client.get(base(api) + "/tasks", params={"offset": offset, "limit": 7}).json()["tasks"]
        seen += [task["task_id"] for task in page]
        if len(page) < 7:
            break
        offset += 7
    assert seen == [t["task_id"] for t in api.tasks(api.share_ids[0])]


@pytest.mark.integration
def test_count_can_be_the_page_size(api: FakeApi, client: httpx.Client) -> None:
    api.configure(count_is_page_size=True)
    assert client.get(base(api) + "/tasks", params={"limit": 10}).json()["count"] == 10


@pytest.mark.integration
def test_list_filters_and_refuses_bad_parameters(api: FakeApi, client: httpx.Client) -> None:
    everything = api.tasks(api.share_ids[0])
    want = [t["task_id"] for t in everything if t["type"] == "import" and t["status"] == "SUCCESS"]
    body = client.get(base(api) + "/tasks", params={"type": "import", "status": "SUCCESS"}).json()
    assert [t["task_id"] for t in body["tasks"]] == want and body["count"] == len(want)
    for params in ({"type": "copy"}, {"status": "DONE"}, {"offset": -1}, {"limit": 0}, {"limit": "x"}):
        response = client.get(base(api) + "/tasks", params=params)
        assert (response.status_code, error_code(response)) == (400, "SFS.TURBO.0001"), params
    api.configure(max_limit=20)
    assert client.get(base(api) + "/tasks", params={"limit": 21}).status_code == 400
    assert client.get(base(api) + "/tasks", params={"limit": 20}).status_code == 200


@pytest.mark.integration
def test_show_answers_the_task_or_0106(api: FakeApi, client: httpx.Client) -> None:
    task_id = finished_task(api)
    response = client.get(f"{base(api)}/task/{task_id}")
    assert response.status_code == 200 and response.json()["task_id"] == task_id
    missing = client.get(f"{base(api)}/task/{'0' * 32}")
    assert missing.status_code == 400
    assert missing.json() == {"errCode": "SFS.TURBO.0106", "errMsg": "Invalid task id."}
    assert HEX32.fullmatch(missing.headers["x-request-id"])


@pytest.mark.integration
@pytest.mark.parametrize(
    ("style", "status", "code"),
    [("400-0002", 400, "SFS.TURBO.0002"), ("404-0002", 404, "SFS.TURBO.0002"), ("403-9000", 403, "SFS.TURBO.9000")],
)
def test_unknown_share_answers_the_configured_style(
    api: FakeApi, client: httpx.Client, style: str, status: int, code: str
) -> None:
    api.configure(share_error_style=style)
    path = f"/v1/{api.project_id}/sfs-turbo/11111111-2222-4333-8444-555555555555/hpc-cache"
    for response in (client.get(path + "/tasks"), client.delete(path + "/task/" + "a" * 32)):
        assert (response.status_code, error_code(response)) == (status, code)
        assert "X-request-id" in raw_header_names(response)


@pytest.mark.integration
@pytest.mark.parametrize("project", ["not-a-project", "f" * 32])
def test_malformed_or_unknown_project_is_a_parameter_error(api: FakeApi, client: httpx.Client, project: str) -> None:
    response = client.get(f"/v1/{project}/sfs-turbo/{api.share_ids[0]}/hpc-cache/tasks")
    assert response.status_code == 400
    assert response.json() == {"errCode": "SFS.TURBO.0001", "errMsg": "parameter error"}


@pytest.mark.integration
def test_unknown_path_is_the_gateways_404(api: FakeApi, client: httpx.Client) -> None:
    response = client.get(f"/v2/{api.project_id}/nothing")
    assert (response.status_code, error_code(response)) == (404, "APIGW.0101")
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "X-Request-Id" in raw_header_names(response)


# --- Deleting ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_delete_answers_202_then_deleting_then_gone(api: FakeApi, client: httpx.Client) -> None:
    task_id = finished_task(api)
    response = client.delete(f"{base(api)}/task/{task_id}")
    assert response.status_code == 202 and response.content == b""
    assert "X-request-id" in raw_header_names(response) and HEX32.fullmatch(response.headers["x-request-id"])
    assert client.get(f"{base(api)}/task/{task_id}").json()["status"] == "DELETING"

    def gone() -> bool:
        listed = client.get(base(api) + "/tasks").json()["tasks"]
        return client.get(f"{base(api)}/task/{task_id}").status_code == 400 and all(
            t["task_id"] != task_id for t in listed
        )

    wait_until(gone)
    assert client.get(base(api) + "/tasks").json()["count"] == 39


@pytest.mark.integration
def test_delete_with_no_deleting_period_is_gone_at_once(api: FakeApi, client: httpx.Client) -> None:
    api.configure(deleting_seconds=0)
    task_id = finished_task(api)
    assert client.delete(f"{base(api)}/task/{task_id}").status_code == 202
    assert error_code(client.get(f"{base(api)}/task/{task_id}")) == "SFS.TURBO.0106"


@pytest.mark.integration
def test_second_delete_is_0106_and_counted_as_a_duplicate(api: FakeApi, client: httpx.Client) -> None:
    task_id, someone_elses = finished_task(api), finished_task(api, status="DELETING")
    assert client.delete(f"{base(api)}/task/{task_id}").status_code == 202
    again = client.delete(f"{base(api)}/task/{task_id}")
    assert again.status_code == 400
    assert again.json() == {"errCode": "SFS.TURBO.0106", "errMsg": "Invalid task id."}
    # Neither a task being deleted by someone else nor one that never existed is a duplicate.
    assert client.delete(f"{base(api)}/task/{someone_elses}").status_code == 400
    assert client.delete(f"{base(api)}/task/{'0' * 32}").status_code == 400
    stats = api.stats()
    assert stats["deletes_accepted"] == 1
    assert stats["duplicate_deletes"] == 1 and stats["duplicate_task_ids"] == [task_id]
    assert stats["requests_by_method_status"]["DELETE"] == {"202": 1, "400": 3}
    deleted = api.deleted()
    assert [(d["share_id"], d["task_id"]) for d in deleted] == [(api.share_ids[0], task_id)]
    assert abs(deleted[0]["at"] - time.time()) < 60


@pytest.mark.integration
def test_deleting_a_running_task_is_accepted_but_counted(api: FakeApi, client: httpx.Client) -> None:
    task_id = finished_task(api, status="DOING")
    assert client.delete(f"{base(api)}/task/{task_id}").status_code == 202
    assert api.stats()["doing_deletes"] == 1
    api.configure(delete_doing=False)
    other = next(t["task_id"] for t in api.tasks(api.share_ids[1]) if t["status"] == "DOING")
    refused = client.delete(f"{base(api, 1)}/task/{other}")
    assert (refused.status_code, error_code(refused)) == (400, "SFS.TURBO.0011")


@pytest.mark.integration
def test_create_answers_a_new_task_id(api: FakeApi, client: httpx.Client) -> None:
    response = client.post(base(api) + "/task", json={"type": "export", "src_target": "dir1", "src_prefix": "a/"})
    assert response.status_code == 200 and HEX32.fullmatch(response.json()["task_id"])
    task = client.get(f"{base(api)}/task/{response.json()['task_id']}").json()
    assert task["type"] == "export" and task["dest_target"] == "dir1" and task["dest_prefix"] == "a/"
    for body in (
        {"type": "copy", "src_target": "d"},
        {"type": "import"},
        {"type": "import", "src_target": "d", "dest_target": "e"},
    ):
        refused = client.post(base(api) + "/task", json=body)
        assert (refused.status_code, error_code(refused)) == (400, "SFS.TURBO.0001"), body


# --- Authentication ----------------------------------------------------------------------------


@pytest.mark.integration
def test_missing_and_unknown_tokens_are_refused_by_the_gateway(api: FakeApi) -> None:
    with httpx.Client(base_url=api.url) as anonymous:
        missing = anonymous.get(base(api) + "/tasks")
        unknown = anonymous.get(base(api) + "/tasks", headers={"X-Auth-Token": "MIInot-a-token"})
    assert (missing.status_code, error_code(missing)) == (401, "APIGW.0301")
    assert missing.json()["error_msg"].endswith("x-auth-token not found")
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    assert "X-Request-Id" in raw_header_names(missing)
    assert (unknown.status_code, error_code(unknown)) == (401, "APIGW.0301")
    assert unknown.json()["error_msg"].endswith("decrypt token fail")
    assert api.stats()["auth_failures"] == 2


@pytest.mark.integration
def test_auth_can_be_turned_off(api: FakeApi) -> None:
    api.configure(auth_required=False)
    assert httpx.get(api.url + base(api) + "/tasks").status_code == 200


def iam_login(url: str, project_id: str, password: str = "fake-password", **scope: str) -> httpx.Response:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": "fake-user", "password": password, "domain": {"name": "fake-domain"}}},
            },
            "scope": {"project": scope or {"id": project_id}},
        }
    }
    return httpx.post(url + "/v3/auth/tokens", json=body)


@pytest.mark.integration
def test_iam_issues_tokens_that_work_and_refuses_wrong_passwords(api: FakeApi) -> None:
    response = iam_login(api.url, api.project_id)
    assert response.status_code == 201
    token = response.headers["x-subject-token"]
    body = response.json()["token"]
    assert body["project"]["id"] == api.project_id
    expires = datetime.fromisoformat(body["expires_at"])
    assert body["expires_at"].endswith("Z")
    assert abs((expires - datetime.now(UTC)).total_seconds() - 86400) < 60
    assert httpx.get(api.url + base(api) + "/tasks", headers={"X-Auth-Token": token}).status_code == 200

    wrong = iam_login(api.url, api.project_id, password="nope")
    assert wrong.status_code == 401
    assert wrong.json() == {
        "error": {"code": 401, "message": "The username or password is wrong.", "title": "Unauthorized"}
    }
    assert iam_login(api.url, api.project_id, name="cn-north-4").status_code == 201  # scope by region name
    stats = api.stats()
    assert stats["tokens_issued"] == 2 and stats["iam_by_status"] == {"201": 2, "401": 1}
    assert stats["requests_total"] == 1  # IAM logins are not SFS API calls


@pytest.mark.integration
def test_issued_tokens_expire_and_can_be_revoked(api: FakeApi) -> None:
    api.configure(token_ttl_s=0.5)
    short = iam_login(api.url, api.project_id).headers["x-subject-token"]
    api.configure(token_ttl_s=3600)
    long = iam_login(api.url, api.project_id).headers["x-subject-token"]

    def status_with(token: str) -> httpx.Response:
        return httpx.get(api.url + base(api) + "/tasks", headers={"X-Auth-Token": token})

    wait_until(lambda: status_with(short).status_code == 401)
    assert status_with(short).json()["error_code"] == "APIGW.0307"
    assert status_with(short).json()["error_msg"] == "The token must be updated."
    assert status_with(long).status_code == 200
    assert httpx.post(api.url + "/_fake/revoke_tokens").json() == {"revoked": 2}
    assert error_code(status_with(long)) == "APIGW.0307"
    assert status_with(api.token).status_code == 200  # static tokens are not revoked
    fresh = iam_login(api.url, api.project_id).headers["x-subject-token"]
    assert status_with(fresh).status_code == 200


def signed_request(
    api: FakeApi, method: str, path: str, *, ak: str = AK, sk: str = SK, now: datetime | None = None, **params: str
) -> httpx.Response:
    url = httpx.URL(api.url + path, params=params or None)
    headers = sign_headers(
        method=method,
        url=str(url),
        headers={"Content-Type": "application/json", "X-Project-Id": api.project_id},
        body=b"",
        access_key=ak,
        secret_key=sk,
        now=now,
    )
    return httpx.request(method, url, headers=headers)


@pytest.mark.integration
def test_aksk_signatures_are_verified(api: FakeApi) -> None:
    assert signed_request(api, "GET", base(api) + "/tasks", limit="3", status="SUCCESS").status_code == 200
    assert signed_request(api, "DELETE", f"{base(api)}/task/{finished_task(api)}").status_code == 202
    unknown = signed_request(api, "GET", base(api) + "/tasks", ak="NOSUCHAK")
    assert (unknown.status_code, error_code(unknown)) == (401, "APIGW.0301")
    assert "ak not exist" in unknown.json()["error_msg"]
    wrong = signed_request(api, "GET", base(api) + "/tasks", sk="wrong")
    assert (wrong.status_code, error_code(wrong)) == (401, "APIGW.0301")
    assert "verify aksk signature fail" in wrong.json()["error_msg"]
    skewed = signed_request(api, "GET", base(api) + "/tasks", now=datetime.now(UTC) - timedelta(minutes=20))
    assert (skewed.status_code, error_code(skewed)) == (401, "APIGW.0303")


@pytest.mark.integration
def test_the_official_sdk_lists_and_deletes_with_aksk_over_http(api: FakeApi) -> None:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdksfsturbo.v1 import DeleteHpcCacheTaskRequest, ListHpcCacheTasksRequest, SFSTurboClient

    sdk = (
        SFSTurboClient.new_builder()
        .with_credentials(BasicCredentials(AK, SK, api.project_id))
        .with_http_config(HttpConfig.get_default_config())
        .with_endpoint(api.url)
        .build()
    )
    share = api.share_ids[1]
    listed = sdk.list_hpc_cache_tasks(ListHpcCacheTasksRequest(share_id=share, offset=0, limit=5, status="SUCCESS"))
    assert len(listed.tasks) == 5 and HEX32.fullmatch(listed.x_request_id)
    task_id = listed.tasks[0].task_id
    deleted = sdk.delete_hpc_cache_task(DeleteHpcCacheTaskRequest(share_id=share, task_id=task_id))
    assert deleted.status_code == 202 and HEX32.fullmatch(deleted.x_request_id)
    with pytest.raises(ClientRequestException) as again:
        sdk.delete_hpc_cache_task(DeleteHpcCacheTaskRequest(share_id=share, task_id=task_id))
    assert again.value.status_code == 400 and "SFS.TURBO.0106" in again.value.error_msg
    assert [d["task_id"] for d in api.deleted()] == [task_id]


# --- Faults ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_error_ratio_is_roughly_honoured(api: FakeApi, client: httpx.Client) -> None:
    api.configure(error_ratio=0.3, fault_seed=1)
    answers = [client.delete(f"{base(api)}/task/{n:032x}") for n in range(400)]
    codes = [answer.status_code for answer in answers]
    assert set(codes) == {400, 500}  # tasks that do not exist: 0106, unless the dice say 500
    assert 0.22 <= codes.count(500) / 400 <= 0.38
    failure = next(answer for answer in answers if answer.status_code == 500)
    assert failure.json() == {"errCode": "SFS.TURBO.0005", "errMsg": "Internal server error"}
    assert api.stats()["injected_faults"] == {"error_ratio": codes.count(500)}


@pytest.mark.integration
def test_fail_first_k_fails_exactly_k_times(api: FakeApi, client: httpx.Client) -> None:
    listed, chosen = finished_task(api, share=0), finished_task(api, share=1)
    api.configure(fail_first_k=3, fail_first_task_ids=[listed])
    codes = [client.delete(f"{base(api)}/task/{listed}").status_code for _ in range(5)]
    assert codes == [500, 500, 500, 202, 400]
    api.configure(fail_first_k=2, fail_first_task_ids=[], fail_first_ratio=1.0)
    assert [client.delete(f"{base(api, 1)}/task/{chosen}").status_code for _ in range(3)] == [500, 500, 202]
    assert api.stats()["injected_faults"] == {"fail_first": 5}


@pytest.mark.integration
def test_outage_starts_and_stops_through_the_control_route(api: FakeApi, client: httpx.Client) -> None:
    task_id = finished_task(api)
    control = httpx.post(api.url + "/_fake/config", json={"outage": True, "outage_status": 503})
    assert control.status_code == 200 and control.json()["outage"] is True
    calls = [
        client.get(base(api) + "/tasks"),
        client.get(f"{base(api)}/task/{task_id}"),
        client.delete(f"{base(api)}/task/{task_id}"),
    ]
    assert [r.status_code for r in calls] == [503, 503, 503]
    httpx.post(
        api.url + "/_fake/config", json={"outage": False, "outage_status": 500, "outage_until": time.time() + 0.3}
    )
    assert client.get(base(api) + "/tasks").json() == {"errCode": "SFS.TURBO.0005", "errMsg": "Internal server error"}
    wait_until(lambda: client.get(base(api) + "/tasks").status_code == 200)
    assert client.delete(f"{base(api)}/task/{task_id}").status_code == 202


@pytest.mark.integration
def test_rate_limit_answers_429_above_the_threshold(api: FakeApi, client: httpx.Client) -> None:
    api.configure(rate_limit_rps=5)
    started = time.monotonic()
    burst = [client.get(base(api) + "/tasks", params={"limit": 1}) for _ in range(12)]
    assert time.monotonic() - started < 0.9, "the burst must fit in one second for this test to mean anything"
    assert [r.status_code for r in burst] == [200] * 5 + [429] * 7
    first = burst[5]
    assert first.json()["error_code"] == "APIGW.0308"
    assert first.json()["error_msg"] == (
        "The throttling threshold has been reached: policy user over ratelimit,limit:5,time:1 second"
    )
    assert first.json()["request_id"] == first.headers["x-request-id"]
    assert "X-Request-Id" in raw_header_names(first)
    assert "retry-after" not in first.headers
    stats = api.stats()
    assert stats["answered_429"] == stats["requests_by_method_status"]["GET"]["429"] == 7
    assert stats["busiest_second"] == 12  # arrivals, refused ones included
    wait_until(lambda: client.get(base(api) + "/tasks", params={"limit": 1}).status_code == 200)


@pytest.mark.integration
def test_retry_after_header_comes_with_429_when_configured(api: FakeApi, client: httpx.Client) -> None:
    api.configure(rate_limit_rps=1, retry_after=2)
    answers = [client.delete(f"{base(api)}/task/{n:032x}") for n in range(3)]
    assert [r.status_code for r in answers] == [400, 429, 429]
    assert all(r.headers["retry-after"] == "2" for r in answers[1:])
    assert api.stats()["busiest_second_by_method"]["DELETE"] == 3


@pytest.mark.integration
def test_dropped_connections_raise_a_transport_error(api: FakeApi, client: httpx.Client) -> None:
    task_id = finished_task(api)
    api.configure(drop_ratio=1.0)
    with pytest.raises(httpx.TransportError):
        client.delete(f"{base(api)}/task/{task_id}")
    assert client.get(f"{base(api)}/task/{task_id}").json()["status"] == "SUCCESS"  # nothing happened


@pytest.mark.integration
def test_a_lost_202_still_deleted_the_task(api: FakeApi, client: httpx.Client) -> None:
    task_id = finished_task(api)
    api.configure(drop_ratio=1.0, drop_after_effect=True)
    with pytest.raises(httpx.TransportError):
        client.delete(f"{base(api)}/task/{task_id}")
    api.configure(drop_ratio=0.0)
    retry = client.delete(f"{base(api)}/task/{task_id}")
    assert (retry.status_code, error_code(retry)) == (400, "SFS.TURBO.0106")
    stats = api.stats()
    assert stats["deletes_accepted"] == 1 and stats["duplicate_deletes"] == 1 and stats["dropped"] == 1
    assert stats["requests_by_method_status"]["DELETE"] == {"400": 1, "dropped": 1}


@pytest.mark.integration
def test_busy_ratio_answers_0011(api: FakeApi, client: httpx.Client) -> None:
    api.configure(busy_ratio=1.0)
    response = client.delete(f"{base(api)}/task/{finished_task(api)}")
    assert (response.status_code, error_code(response)) == (400, "SFS.TURBO.0011")


@pytest.mark.integration
def test_latency_is_added(api: FakeApi, client: httpx.Client) -> None:
    api.configure(latency_ms=150)
    started = time.monotonic()
    client.get(base(api) + "/tasks", params={"limit": 1})
    assert time.monotonic() - started >= 0.15


# --- Control routes ----------------------------------------------------------------------------


@pytest.mark.integration
def test_stats_count_api_calls_only_and_reset(api: FakeApi, client: httpx.Client) -> None:
    before = time.time()
    for _ in range(3):
        client.get(base(api) + "/tasks", params={"limit": 1})
    httpx.get(api.url + "/_fake/tasks")
    stats = httpx.get(api.url + "/_fake/stats").json()
    assert stats["requests_total"] == 3
    assert stats["requests_by_method_status"] == {"GET": {"200": 3}}
    assert stats["busiest_second"] == 3 and stats["busiest_second_by_method"] == {"GET": 3}
    assert before <= stats["first_request_at"] <= stats["last_request_at"] <= time.time()
    assert httpx.post(api.url + "/_fake/reset_stats").json() == {"ok": True}
    cleared = api.stats()
    assert cleared["requests_total"] == 0 and cleared["requests_by_method_status"] == {}
    assert cleared["first_request_at"] is None and cleared["busiest_second"] == 0


@pytest.mark.integration
def test_config_patches_are_checked(api: FakeApi) -> None:
    for patch in ({"error_ratio": 2}, {"no_such_knob": 1}, {"seed": 9}, {"outage": "yes"}, {"outage_status": 502}):
        response = httpx.post(api.url + "/_fake/config", json=patch)
        assert response.status_code == 400 and response.json()["problems"], patch
    assert httpx.get(api.url + "/_fake/config").json()["error_ratio"] == 0.0


@pytest.mark.integration
def test_task_dump_and_load_routes(api: FakeApi) -> None:
    share = api.share_ids[0]
    dumped = httpx.get(api.url + "/_fake/tasks", params={"share_id": share}).json()["tasks"]
    assert len(dumped) == 40 and {t["share_id"] for t in dumped} == {share}
    assert httpx.get(api.url + "/_fake/tasks", params={"share_id": "nope"}).status_code == 404
    record = {"share_id": share, "task_id": "c" * 32, "type": "preload", "status": "FAIL", "end_time": "N/A"}
    loaded = httpx.post(api.url + "/_fake/tasks", json={"tasks": [record], "replace": True})
    assert loaded.json() == {"added": 1}
    assert api.tasks(share) == [
        {**record, "src_target": "", "dest_target": "", "src_prefix": "", "dest_prefix": "", "message": ""}
    ]


@pytest.mark.integration
def test_serves_a_seed_file(tmp_path: Path) -> None:
    inventory = generate(shares=1, tasks_per_share=5, seed=2, now=NOW)
    path = tmp_path / "seed.jsonl"
    seed.dump(inventory, path)
    with FakeApi(FakeConfig(seed_file=str(path), project_id="ab" * 16)) as fake:
        assert fake.share_ids == inventory.share_ids and fake.project_id == "ab" * 16
        listed = httpx.get(fake.url + base(fake) + "/tasks", headers={"X-Auth-Token": fake.token}).json()
        assert [t["task_id"] for t in listed["tasks"]] == [t.task_id for t in inventory.tasks]


# --- Running it --------------------------------------------------------------------------------


def test_cli_refuses_a_non_loopback_host() -> None:
    from sandbox.fakeapi.cli import fake_api

    app = typer.Typer()
    app.command()(fake_api)
    result = CliRunner().invoke(app, ["--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "not a loopback address" in result.output
    with pytest.raises(ValueError, match="loopback"):
        FakeApi(FakeConfig(host="192.0.2.1"))


def list_then_delete_twice(url: str, api: FakeApi | FakeApiProcess) -> str:
    """What the brief asks a user to check: a listed task deletes once (202), then 400 0106."""
    with httpx.Client(base_url=url, headers={"X-Auth-Token": api.token}) as http:
        tasks = http.get(base(api) + "/tasks", params={"status": "SUCCESS"}).json()["tasks"]
        task_id = str(tasks[0]["task_id"])
        first = http.delete(f"{base(api)}/task/{task_id}")
        assert first.status_code == 202 and HEX32.fullmatch(first.headers["X-request-id"])
        second = http.delete(f"{base(api)}/task/{task_id}")
        assert second.status_code == 400 and second.json()["errCode"] == "SFS.TURBO.0106"
    return task_id


@pytest.mark.integration
def test_list_and_delete_in_thread(api: FakeApi) -> None:
    task_id = list_then_delete_twice(api.url, api)
    assert api.stats()["duplicate_task_ids"] == [task_id]


@pytest.mark.integration
def test_list_and_delete_against_the_subprocess() -> None:
    fake = FakeApiProcess(FakeConfig(shares=2, tasks_per_share=20, seed=4))
    with fake:
        assert fake.url.startswith("http://127.0.0.1:")
        task_id = list_then_delete_twice(fake.url, fake)
        stats = fake.stats()
        assert stats["deletes_accepted"] == 1 and stats["duplicate_task_ids"] == [task_id]
        assert fake.configure(latency_ms=5)["latency_ms"] == 5
        assert [d["task_id"] for d in fake.deleted()] == [task_id]
    assert fake.returncode == 0  # SIGTERM: a clean stop


def test_config_round_trips_through_json() -> None:
    config = FakeConfig(aksk={AK: SK}, fail_first_task_ids=["a" * 32], outage_until=1.5, max_limit=500)
    data: dict[str, Any] = json.loads(json.dumps(config.to_dict()))
    assert FakeConfig.from_dict(data) == config
