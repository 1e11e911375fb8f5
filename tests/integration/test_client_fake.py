"""SfsTurboClient over real HTTP against the in-thread fake API: the reference's DELETE outcome
table end to end, paging, ID refusal and connection reuse, checked against the fake's own counts."""

from __future__ import annotations

import math
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from sandbox.fakeapi import FakeApi, FakeConfig
from worker.api.answers import Verdict
from worker.api.auth import TokenAuth
from worker.api.client import ApiError, ClientConfig, SfsTurboClient, ShareMissingError
from worker.ids import InvalidIdError

pytestmark = pytest.mark.integration

PAGE = 7
HEX32 = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi(FakeConfig(shares=2, tasks_per_share=50, seed=11, deleting_seconds=0)) as fake:
        yield fake


def make_client(
    api: FakeApi, *, token: str | None = None, transport: httpx.BaseTransport | None = None, page_size: int = PAGE
) -> SfsTurboClient:
    return SfsTurboClient(
        ClientConfig(endpoint=api.url, project_id=api.project_id, page_size=page_size, read_timeout_s=5.0),
        auth=TokenAuth(SecretStr(token if token is not None else api.token)),
        transport=transport,
    )


@pytest.fixture
def client(api: FakeApi) -> Iterator[SfsTurboClient]:
    with make_client(api) as c:
        yield c


def sent(api: FakeApi) -> int:
    return int(api.stats()["requests_total"])


def task_ids(api: FakeApi, share: int = 0, status: str | None = None) -> list[str]:
    return [t["task_id"] for t in api.tasks(api.share_ids[share]) if status is None or t.get("status") == status]


def finished_task(api: FakeApi, index: int = 0) -> str:
    return task_ids(api, status="SUCCESS")[index]


class HeaderRecorder(httpx.BaseTransport):
    """A real HTTP transport that remembers the raw (case-preserved) header names of each answer."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.header_names: list[list[str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.header_names.append([name.decode() for name, _ in response.headers.raw])
        return response

    def close(self) -> None:
        self.inner.close()


# --- The DELETE outcome table, row by row --------------------------------------------------------


def test_202_is_ok_with_the_request_id_and_the_task_goes(api: FakeApi, client: SfsTurboClient) -> None:
    share, task = api.share_ids[0], finished_task(api)
    result = client.delete_task(share, task)
    assert result.status == 202
    assert result.verdict is Verdict.OK
    assert result.request_id is not None and len(result.request_id) == 32
    assert result.error_code is None
    assert task not in task_ids(api)
    assert api.stats()["deletes_accepted"] == 1


def test_deleting_twice_is_gone_the_second_time(api: FakeApi, client: SfsTurboClient) -> None:
    share, task = api.share_ids[0], finished_task(api)
    first = client.delete_task(share, task)
    second = client.delete_task(share, task)
    assert first.verdict is Verdict.OK
    assert second.status == 400
    assert second.verdict is Verdict.GONE
    assert (second.error_code, second.error_msg) == ("SFS.TURBO.0106", "Invalid task id.")  # errCode/errMsg shape
    assert second.request_id is not None and second.request_id != first.request_id
    stats = api.stats()
    assert stats["deletes_accepted"] == 1
    assert stats["duplicate_deletes"] == 1


def test_a_task_that_never_existed_is_gone(api: FakeApi, client: SfsTurboClient) -> None:
    result = client.delete_task(api.share_ids[0], HEX32)
    assert result.verdict is Verdict.GONE
    assert api.stats()["deletes_accepted"] == 0


def test_busy_is_retryable_and_nothing_is_deleted(api: FakeApi, client: SfsTurboClient) -> None:
    api.configure(busy_ratio=1.0)
    share, task = api.share_ids[0], finished_task(api)
    result = client.delete_task(share, task)
    assert result.status == 400
    assert result.error_code == "SFS.TURBO.0011"
    assert result.verdict is Verdict.RETRYABLE
    assert task in task_ids(api)
    api.configure(busy_ratio=0.0)
    assert client.delete_task(share, task).verdict is Verdict.OK


@pytest.mark.parametrize(
    ("style", "status", "code"),
    [("400-0002", 400, "SFS.TURBO.0002"), ("404-0002", 404, "SFS.TURBO.0002"), ("403-9000", 403, "SFS.TURBO.9000")],
)
def test_unknown_share_is_share_missing_in_every_style(
    api: FakeApi, client: SfsTurboClient, style: str, status: int, code: str
) -> None:
    api.configure(share_error_style=style)
    unknown = str(uuid.UUID(int=12345, version=4))
    deleted = client.delete_task(unknown, HEX32)
    assert (deleted.status, deleted.error_code, deleted.verdict) == (status, code, Verdict.SHARE_MISSING)
    assert deleted.request_id is not None
    shown, task = client.show_task(unknown, HEX32)
    assert (shown.status, shown.verdict, task) == (status, Verdict.SHARE_MISSING, None)
    with pytest.raises(ShareMissingError) as info:
        list(client.list_tasks(unknown))
    assert info.value.answer.error_code == code


def test_wrong_project_is_a_permanent_error(api: FakeApi) -> None:
    other = SfsTurboClient(ClientConfig(endpoint=api.url, project_id="f" * 32), auth=TokenAuth(SecretStr(api.token)))
    with other:
        result = other.delete_task(api.share_ids[0], finished_task(api))
        assert (result.status, result.error_code, result.verdict) == (400, "SFS.TURBO.0001", Verdict.PERMANENT)
        with pytest.raises(ApiError) as info:
            list(other.list_tasks(api.share_ids[0]))
    assert not isinstance(info.value, ShareMissingError)
    assert "SFS.TURBO.0001" in str(info.value)


def test_500_is_retryable(api: FakeApi, client: SfsTurboClient) -> None:
    api.configure(error_ratio=1.0)
    share, task = api.share_ids[0], finished_task(api)
    result = client.delete_task(share, task)
    assert (result.status, result.error_code, result.verdict) == (500, "SFS.TURBO.0005", Verdict.RETRYABLE)
    assert result.request_id is not None
    assert task in task_ids(api)


@pytest.mark.parametrize(("outage_status", "code"), [(500, "SFS.TURBO.0005"), (503, "APIGW.0201")])
def test_outage_is_retryable(api: FakeApi, client: SfsTurboClient, outage_status: int, code: str) -> None:
    api.configure(outage=True, outage_status=outage_status)
    share, task = api.share_ids[0], finished_task(api)
    result = client.delete_task(share, task)
    assert (result.status, result.error_code, result.verdict) == (outage_status, code, Verdict.RETRYABLE)
    assert result.request_id is not None
    api.configure(outage=False)
    assert client.delete_task(share, task).verdict is Verdict.OK


def test_bad_static_token_is_auth_renew_and_sent_once(api: FakeApi) -> None:
    with make_client(api, token="not-a-token") as bad:
        result = bad.delete_task(api.share_ids[0], finished_task(api))
    assert result.status == 401
    assert result.verdict is Verdict.AUTH_RENEW
    assert result.error_code == "APIGW.0301"  # error_code/error_msg shape
    assert result.error_msg is not None and "decrypt token fail" in result.error_msg
    assert result.request_id is not None
    # A static token cannot be renewed: the 401 is passed on, not retried.
    assert sent(api) == 1
    assert api.stats()["deletes_accepted"] == 0


def _iam_token(api: FakeApi) -> str:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "fake-user", "password": "fake-password", "domain": {"name": "fake-domain"}}
                },
            },
            "scope": {"project": {"id": api.project_id}},
        }
    }
    response = httpx.post(f"{api.url}/v3/auth/tokens", json=body, timeout=5.0)
    assert response.status_code == 201
    return response.headers["X-Subject-Token"]


def test_expired_token_is_auth_renew(api: FakeApi) -> None:
    api.configure(token_ttl_s=1.0)
    token = _iam_token(api)
    share = api.share_ids[0]
    with make_client(api, token=token) as c:
        assert c.delete_task(share, finished_task(api, 0)).verdict is Verdict.OK
        time.sleep(1.05)
        result = c.delete_task(share, finished_task(api, 1))
    assert (result.status, result.error_code, result.verdict) == (401, "APIGW.0307", Verdict.AUTH_RENEW)
    assert api.stats()["deletes_accepted"] == 1


def test_revoked_token_is_auth_renew(api: FakeApi) -> None:
    token = _iam_token(api)
    api.revoke_tokens()
    with make_client(api, token=token) as c:
        result = c.delete_task(api.share_ids[0], finished_task(api))
    assert (result.status, result.error_code, result.verdict) == (401, "APIGW.0307", Verdict.AUTH_RENEW)


def test_throttled_with_retry_after(api: FakeApi, client: SfsTurboClient) -> None:
    api.configure(rate_limit_rps=1, retry_after=2.5)
    share = api.share_ids[0]
    first = client.delete_task(share, finished_task(api, 0))
    second = client.delete_task(share, finished_task(api, 1))
    assert first.verdict is Verdict.OK
    assert (second.status, second.error_code, second.verdict) == (429, "APIGW.0308", Verdict.THROTTLED)
    assert second.retry_after_s == 2.5
    assert second.error_msg is not None and "limit:1" in second.error_msg
    assert second.request_id is not None
    assert api.stats()["answered_429"] == 1


def test_throttled_without_retry_after(api: FakeApi, client: SfsTurboClient) -> None:
    api.configure(rate_limit_rps=1)
    share = api.share_ids[0]
    client.delete_task(share, finished_task(api, 0))
    second = client.delete_task(share, finished_task(api, 1))
    assert second.verdict is Verdict.THROTTLED
    assert second.retry_after_s is None


def test_dropped_connection_is_status_0_retryable_and_not_resent(api: FakeApi, client: SfsTurboClient) -> None:
    api.configure(drop_ratio=1.0)
    share, task = api.share_ids[0], finished_task(api)
    result = client.delete_task(share, task)
    assert result.status == 0
    assert result.verdict is Verdict.RETRYABLE
    assert result.error_code is not None and result.error_code.startswith("transport.")
    assert result.request_id is None
    stats = api.stats()
    assert stats["dropped"] == 1
    assert stats["requests_total"] == 1  # a DELETE is never silently sent again
    # The delete did not happen: a retry is accepted.
    api.configure(drop_ratio=0.0)
    assert client.delete_task(share, task).verdict is Verdict.OK


def test_a_lost_202_shows_up_as_gone_on_retry(api: FakeApi, client: SfsTurboClient) -> None:
    api.configure(drop_ratio=1.0, drop_after_effect=True)
    share, task = api.share_ids[0], finished_task(api)
    assert client.delete_task(share, task).status == 0
    api.configure(drop_ratio=0.0)
    assert client.delete_task(share, task).verdict is Verdict.GONE
    assert api.stats()["deletes_accepted"] == 1


def test_request_id_is_read_whatever_case_the_server_writes(api: FakeApi) -> None:
    recorder = HeaderRecorder()
    share = api.share_ids[0]
    with make_client(api, transport=recorder) as c:
        ok = c.delete_task(share, finished_task(api))  # SFS answer: X-request-id
        gone = c.delete_task(share, HEX32)  # SFS error: X-request-id
        api.configure(rate_limit_rps=1)
        c.delete_task(share, finished_task(api))  # admitted: the throttle allows one a second
        throttled = c.delete_task(share, finished_task(api))  # gateway answer: X-Request-Id
    names = recorder.header_names
    assert "X-request-id" in names[0]
    assert "X-request-id" in names[1]
    assert throttled.verdict is Verdict.THROTTLED
    assert "X-Request-Id" in names[3]
    for result in (ok, gone, throttled):
        assert result.request_id is not None and len(result.request_id) == 32
    assert len({ok.request_id, gone.request_id, throttled.request_id}) == 3


# --- show ----------------------------------------------------------------------------------------


def test_show_returns_the_task(api: FakeApi, client: SfsTurboClient) -> None:
    share = api.share_ids[0]
    record = next(t for t in api.tasks(share) if t.get("status") == "SUCCESS" and t.get("end_time"))
    result, task = client.show_task(share, record["task_id"])
    assert result.ok
    assert task is not None
    assert (task.task_id, task.status, task.type) == (record["task_id"], "SUCCESS", record["type"])
    assert task.end_time is not None
    assert task.end_time.strftime("%Y-%m-%dT%H:%M:%S") == record["end_time"]  # read as UTC


def test_show_of_a_deleted_task_is_gone(api: FakeApi, client: SfsTurboClient) -> None:
    share, task = api.share_ids[0], finished_task(api)
    client.delete_task(share, task)
    result, shown = client.show_task(share, task)
    assert result.verdict is Verdict.GONE
    assert shown is None


# --- Paging --------------------------------------------------------------------------------------


def list_requests(api: FakeApi) -> int:
    return sum(api.stats()["requests_by_method_status"].get("GET", {}).values())


def test_list_tasks_returns_every_task_exactly_once(api: FakeApi, client: SfsTurboClient) -> None:
    share = api.share_ids[0]
    listed = [t.task_id for t in client.list_tasks(share)]
    assert len(listed) == 50
    assert sorted(listed) == sorted(task_ids(api))
    assert all(t.share_id == share and t.project_id == api.project_id for t in client.list_tasks(share))
    assert list_requests(api) == 2 * math.ceil(50 / PAGE)  # two listings, 8 pages each, the last short


def test_list_tasks_after_an_exactly_full_last_page(api: FakeApi, client: SfsTurboClient) -> None:
    share = api.share_ids[1]
    keep = api.tasks(share)[:49]
    api.load_tasks([{**t, "share_id": share} for t in keep], replace=True)
    listed = [t.task_id for t in client.list_tasks(share)]
    assert sorted(listed) == sorted(t["task_id"] for t in keep)
    assert len(set(listed)) == 49
    assert list_requests(api) == 49 // PAGE + 1  # 7 full pages, then one empty page


@pytest.mark.parametrize(("status", "kind"), [("SUCCESS", None), (None, "import"), ("SUCCESS", "export")])
def test_list_filters_are_applied_by_the_server(
    api: FakeApi, client: SfsTurboClient, status: str | None, kind: str | None
) -> None:
    share = api.share_ids[0]
    expected = sorted(
        t["task_id"]
        for t in api.tasks(share)
        if (status is None or t["status"] == status) and (kind is None or t["type"] == kind)
    )
    assert expected  # the seeded inventory has some of each
    listed = list(client.list_tasks(share, status=status, type=kind))
    assert sorted(t.task_id for t in listed) == expected
    assert all((status is None or t.status == status) and (kind is None or t.type == kind) for t in listed)
    # Filtered on the server: only as many pages as the matching tasks need.
    assert list_requests(api) == len(expected) // PAGE + 1


class OutageOnRequest(httpx.BaseTransport):
    """Real HTTP; the fake answers 503 to the request number ``which`` only."""

    def __init__(self, api: FakeApi, which: int) -> None:
        self.api = api
        self.which = which
        self.count = 0
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        if self.count != self.which:
            return self.inner.handle_request(request)
        self.api.configure(outage=True, outage_status=503)
        try:
            response = self.inner.handle_request(request)
            response.read()
            return response
        finally:
            self.api.configure(outage=False)

    def close(self) -> None:
        self.inner.close()


def test_a_list_page_answering_503_once_is_retried_and_the_listing_completes(api: FakeApi) -> None:
    share = api.share_ids[0]
    with make_client(api, transport=OutageOnRequest(api, which=2)) as c:
        listed = [t.task_id for t in c.list_tasks(share)]
    assert sorted(listed) == sorted(task_ids(api))
    statuses = api.stats()["requests_by_method_status"]["GET"]
    assert statuses.get("503") == 1
    assert statuses.get("200") == math.ceil(50 / PAGE)


def test_listing_an_unknown_share_raises_share_missing(api: FakeApi, client: SfsTurboClient) -> None:
    with pytest.raises(ShareMissingError) as info:
        list(client.list_tasks(str(uuid.UUID(int=99, version=4))))
    assert info.value.answer.verdict is Verdict.SHARE_MISSING
    assert "SFS.TURBO.0002" in str(info.value)


# --- IDs: refused, nothing sent ------------------------------------------------------------------

BAD_IDS = [
    "../x",
    "a/b",
    "%2F",
    "..",
    "",
    "a" * 65,
    "t\u00e2che",
    "\uff11\uff12\uff13",
    "a\nb",
    "a\x00b",
    "a\x1b[2J",
    "a b",
    "a?b",
    "a#b",
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused_and_nothing_is_sent(api: FakeApi, client: SfsTurboClient, bad: str) -> None:
    share, task = api.share_ids[0], finished_task(api)
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("task_id", lambda: client.delete_task(share, bad)),
        ("share_id", lambda: client.delete_task(bad, task)),
        ("task_id", lambda: client.show_task(share, bad)),
        ("share_id", lambda: client.show_task(bad, task)),
        ("share_id", lambda: list(client.list_tasks(bad))),
    ]
    for kind, call in calls:
        with pytest.raises(InvalidIdError) as info:
            call()
        assert str(info.value).startswith(f"invalid {kind} ")
        assert info.value.reason
        assert str(info.value).isprintable()
    assert sent(api) == 0
    assert task in task_ids(api)


# --- Connection reuse ----------------------------------------------------------------------------


@pytest.fixture
def tcp_connects(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection opened to the fake (whichever HTTP stack opens it, it calls connect)."""
    opened: list[tuple[str, int]] = []
    real = socket.socket.connect

    def counting(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and int(address[1]) == api.port:
            opened.append((str(address[0]), int(address[1])))
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", counting)
    return opened


def test_many_calls_through_one_client_reuse_one_connection_per_stack(
    api: FakeApi, tcp_connects: list[tuple[str, int]]
) -> None:
    share = api.share_ids[0]
    tasks = task_ids(api, status="SUCCESS")[:30]
    with make_client(api) as c:
        verdicts = [c.delete_task(share, t).verdict for t in tasks]
        verdicts += [c.delete_task(share, t).verdict for t in tasks[:5]]  # 400 answers with a body
        connects_for_deletes = len(tcp_connects)
        listed = list(c.list_tasks(api.share_ids[1]))
        listed += list(c.list_tasks(api.share_ids[1]))
    assert verdicts.count(Verdict.OK) == 30
    assert verdicts.count(Verdict.GONE) == 5
    assert len(listed) == 100
    assert sent(api) == 35 + 2 * math.ceil(50 / PAGE)
    # DELETE and show go over the client's own keep-alive wire, listings through httpx's pool:
    # one connection for all 35 deletes, and one more for every page of both listings.
    assert connects_for_deletes == 1
    assert len(tcp_connects) == 2


def test_the_connection_counter_sees_new_connections(api: FakeApi, tcp_connects: list[tuple[str, int]]) -> None:
    # The control for the test above: a client per call opens a connection per call.
    share = api.share_ids[0]
    for task in task_ids(api, status="SUCCESS")[:3]:
        with make_client(api) as c:
            assert c.delete_task(share, task).verdict is Verdict.OK
    assert len(tcp_connects) == 3
