"""SfsTurboClient over httpx.MockTransport: answers the fake cannot produce, and what is sent."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.api.answers import Verdict
from worker.api.client import ApiError, ClientConfig, SfsTurboClient, ShareMissingError
from worker.ids import InvalidIdError
from worker.models import parse_time
from worker.settings import SettingsError, load_settings

PROJECT = "0123456789abcdef0123456789abcdef"
SHARE = "5bc8fbbc-bde5-4099-8164-d8399f767c45"
TASK = "fedcba9876543210fedcba9876543210"
ENDPOINT = "https://sfs-turbo.cn-north-4.myhuaweicloud.com"
TASK_PATH = f"/v1/{PROJECT}/sfs-turbo/{SHARE}/hpc-cache/task/{TASK}"
LIST_PATH = f"/v1/{PROJECT}/sfs-turbo/{SHARE}/hpc-cache/tasks"
PLAIN = re.compile(r"[A-Za-z0-9-]{1,64}")

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records every request and answers from ``respond``."""

    def __init__(self, respond: Handler) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)


def make_client(
    respond: Handler, *, page_size: int = 1000, pace: Callable[[], object] | None = None
) -> tuple[SfsTurboClient, Recorder]:
    recorder = Recorder(respond)
    client = SfsTurboClient(
        ClientConfig(endpoint=ENDPOINT, project_id=PROJECT, page_size=page_size),
        transport=httpx.MockTransport(recorder),
        pace=pace,
    )
    return client, recorder


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def respond(request: httpx.Request) -> httpx.Response:
        if body is None:
            content = b""
        elif isinstance(body, bytes):
            content = body
        else:
            content = json.dumps(body).encode()
        return httpx.Response(status, content=content, headers=headers or {})

    return respond


def sfs(code: str, msg: str = "message") -> dict[str, str]:
    return {"errCode": code, "errMsg": msg}


def gateway(code: str, msg: str = "message") -> dict[str, str]:
    return {"error_code": code, "error_msg": msg, "request_id": "body-rid"}


# --- What is sent --------------------------------------------------------------------------------


def test_delete_sends_one_plain_request_to_the_documented_path() -> None:
    client, rec = make_client(answer(202, headers={"X-request-id": "rid-1"}))
    result = client.delete_task(SHARE, TASK)
    assert result.verdict is Verdict.OK
    assert result.status == 202
    assert len(rec.requests) == 1
    request = rec.requests[0]
    assert request.method == "DELETE"
    assert request.url.host == "sfs-turbo.cn-north-4.myhuaweicloud.com"
    assert request.url.raw_path.decode() == TASK_PATH  # no query
    assert request.content == b""
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("sfs-turbo-cleanup/")


def test_show_sends_get_to_the_task_path() -> None:
    client, rec = make_client(answer(200, {"task_id": TASK, "status": "SUCCESS"}))
    client.show_task(SHARE, TASK)
    assert [(r.method, r.url.raw_path.decode()) for r in rec.requests] == [("GET", TASK_PATH)]


def test_list_page_sends_offset_limit_and_filters() -> None:
    client, rec = make_client(answer(200, {"tasks": [], "count": 0}))
    client.list_page(SHARE, offset=14, limit=7, status="SUCCESS", type="export")
    request = rec.requests[0]
    assert request.url.path == LIST_PATH
    assert dict(request.url.params) == {"offset": "14", "limit": "7", "status": "SUCCESS", "type": "export"}


def test_list_page_without_filters_sends_none() -> None:
    client, rec = make_client(answer(200, {"tasks": [], "count": 0}))
    client.list_page(SHARE, offset=0, limit=5)
    assert dict(rec.requests[0].url.params) == {"offset": "0", "limit": "5"}


def test_pace_is_called_once_per_request() -> None:
    calls: list[int] = []
    client, rec = make_client(answer(202), pace=lambda: calls.append(1))
    for _ in range(3):
        client.delete_task(SHARE, TASK)
    assert len(calls) == len(rec.requests) == 3


# --- Request IDs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["X-request-id", "X-Request-Id", "x-request-id", "X-REQUEST-ID"])
@pytest.mark.parametrize(("status", "body"), [(202, None), (400, sfs("SFS.TURBO.0106")), (429, gateway("APIGW.0308"))])
def test_request_id_is_read_whatever_the_header_case(name: str, status: int, body: Any) -> None:
    client, _ = make_client(answer(status, body, {name: "rid-42"}))
    assert client.delete_task(SHARE, TASK).request_id == "rid-42"


def test_openstack_request_id_is_a_fallback() -> None:
    client, _ = make_client(answer(500, sfs("SFS.TURBO.0005"), {"X-Openstack-Request-Id": "req-os-1"}))
    assert client.delete_task(SHARE, TASK).request_id == "req-os-1"


def test_no_request_id_header_gives_none() -> None:
    client, _ = make_client(answer(202))
    assert client.delete_task(SHARE, TASK).request_id is None


def test_request_id_is_bounded() -> None:
    client, _ = make_client(answer(202, headers={"X-request-id": "r" * 5000}))
    assert client.delete_task(SHARE, TASK).request_id == "r" * 128


# --- Answers the fake cannot produce -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "verdict", "code"),
    [
        (403, gateway("APIGW.0302", "forbidden"), Verdict.FATAL, "APIGW.0302"),
        (404, gateway("APIGW.0101", "no such API"), Verdict.FATAL, "APIGW.0101"),
        (429, gateway("APIG.0308", "throttled"), Verdict.THROTTLED, "APIGW.0308"),
        (401, gateway("APIG.0307", "expired"), Verdict.AUTH_RENEW, "APIGW.0307"),
        (403, sfs("SFS.TURBO.0103", "conflict"), Verdict.RETRYABLE, "SFS.TURBO.0103"),
        (400, sfs("SFS.TURBO.0037", "busy"), Verdict.RETRYABLE, "SFS.TURBO.0037"),
        (400, sfs("SFS.TURBO.0001", "parameter error"), Verdict.PERMANENT, "SFS.TURBO.0001"),
        (502, None, Verdict.RETRYABLE, None),
        (504, None, Verdict.RETRYABLE, None),
        (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", Verdict.RETRYABLE, None),
        (500, b"Internal Server Error", Verdict.RETRYABLE, None),
        (400, b"Bad Request", Verdict.PERMANENT, None),
    ],
)
def test_delete_answers_are_classified(status: int, body: Any, verdict: Verdict, code: str | None) -> None:
    client, _ = make_client(answer(status, body, {"X-Request-Id": "rid"}))
    result = client.delete_task(SHARE, TASK)
    assert result.status == status
    assert result.verdict is verdict
    assert result.error_code == code
    assert result.request_id == "rid"


def test_forbidden_describes_what_to_fix() -> None:
    client, _ = make_client(answer(403, gateway("APIGW.0302", "forbidden")))
    text = client.delete_task(SHARE, TASK).describe()
    assert "HTTP 403" in text
    assert "APIGW.0302" in text
    assert "IAM permission" in text


def test_error_message_is_read_from_both_shapes() -> None:
    client, _ = make_client(answer(400, sfs("SFS.TURBO.0106", "Invalid task id.")))
    assert client.delete_task(SHARE, TASK).error_msg == "Invalid task id."
    client, _ = make_client(answer(429, gateway("APIGW.0308", "limit:20,time:1 second")))
    assert client.delete_task(SHARE, TASK).error_msg == "limit:20,time:1 second"


def test_a_success_body_is_never_read_as_an_error() -> None:
    client, _ = make_client(answer(202, sfs("SFS.TURBO.0106")))
    result = client.delete_task(SHARE, TASK)
    assert result.verdict is Verdict.OK
    assert result.error_code is None


@pytest.mark.parametrize(("header", "expected"), [("5", 5.0), ("0.25", 0.25), ("later", None)])
def test_retry_after_is_parsed(header: str, expected: float | None) -> None:
    client, _ = make_client(answer(429, gateway("APIGW.0308"), {"Retry-After": header}))
    result = client.delete_task(SHARE, TASK)
    assert result.verdict is Verdict.THROTTLED
    assert result.retry_after_s == expected


def test_no_retry_after_header_gives_none() -> None:
    client, _ = make_client(answer(429, gateway("APIGW.0308")))
    assert client.delete_task(SHARE, TASK).retry_after_s is None


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
    ],
)
def test_transport_errors_are_an_answer_not_an_exception(error: httpx.TransportError) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise error

    client, rec = make_client(respond)
    result = client.delete_task(SHARE, TASK)
    assert result.status == 0
    assert result.verdict is Verdict.RETRYABLE
    assert result.error_code == f"transport.{type(error).__name__}"
    assert result.error_msg
    assert result.request_id is None
    assert result.describe().startswith("no answer")
    assert len(rec.requests) == 1


# --- Show ----------------------------------------------------------------------------------------


def test_show_returns_the_task_with_parsed_end_time() -> None:
    body = {
        "task_id": TASK,
        "type": "import",
        "status": "SUCCESS",
        "src_target": "obs-link",
        "dest_target": "obs-link",
        "start_time": "2024-03-01T10:00:00",
        "end_time": "2024-03-01T11:30:00",
        "message": "task succeeded",
    }
    client, _ = make_client(answer(200, body, {"X-request-id": "rid"}))
    result, task = client.show_task(SHARE, TASK)
    assert result.ok
    assert task is not None
    assert (task.project_id, task.share_id, task.task_id) == (PROJECT, SHARE, TASK)
    assert (task.status, task.type) == ("SUCCESS", "import")
    assert task.end_time == datetime(2024, 3, 1, 11, 30, tzinfo=UTC)
    assert task.raw["message"] == "task succeeded"


def test_show_of_a_missing_task_is_gone_without_a_task() -> None:
    client, _ = make_client(answer(400, sfs("SFS.TURBO.0106", "Invalid task id.")))
    result, task = client.show_task(SHARE, TASK)
    assert result.verdict is Verdict.GONE
    assert task is None


@pytest.mark.parametrize("body", [b"not json", b"[]", b""])
def test_show_with_an_unreadable_success_body_gives_no_task(body: bytes) -> None:
    client, _ = make_client(answer(200, body))
    result, task = client.show_task(SHARE, TASK)
    assert result.ok
    assert task is None


# --- Paging --------------------------------------------------------------------------------------


def paged_server(total: int, *, count: Callable[[int, int], int] | None = None) -> Handler:
    """A list endpoint holding ``total`` tasks ``t-0 .. t-(total-1)``."""

    def respond(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        limit = int(request.url.params["limit"])
        page = [{"task_id": f"t-{i}", "status": "SUCCESS", "type": "import"} for i in range(total)][
            offset : offset + limit
        ]
        shown = count(len(page), total) if count else total
        return httpx.Response(200, json={"tasks": page, "count": shown})

    return respond


def offsets(rec: Recorder) -> list[tuple[int, int]]:
    return [(int(r.url.params["offset"]), int(r.url.params["limit"])) for r in rec.requests]


def test_list_tasks_pages_until_a_short_page() -> None:
    client, rec = make_client(paged_server(50), page_size=7)
    ids = [task.task_id for task in client.list_tasks(SHARE)]
    assert ids == [f"t-{i}" for i in range(50)]
    assert offsets(rec) == [(o, 7) for o in range(0, 50, 7)]  # 8 pages, the last has 1 task


def test_list_tasks_reads_an_empty_page_after_an_exactly_full_one() -> None:
    client, rec = make_client(paged_server(49), page_size=7)
    assert len(list(client.list_tasks(SHARE))) == 49
    assert offsets(rec) == [(o, 7) for o in range(0, 56, 7)]  # 7 full pages, then an empty one


def test_list_tasks_does_not_trust_count() -> None:
    # `count` as the page size (not the total) must not stop the listing early.
    client, _ = make_client(paged_server(20, count=lambda page, total: page), page_size=7)
    assert len(list(client.list_tasks(SHARE))) == 20


def test_list_tasks_of_an_empty_share() -> None:
    client, rec = make_client(paged_server(0), page_size=7)
    assert list(client.list_tasks(SHARE)) == []
    assert len(rec.requests) == 1


def test_list_tasks_passes_filters_on_every_page() -> None:
    client, rec = make_client(paged_server(10), page_size=4)
    list(client.list_tasks(SHARE, status="FAIL", type="preload"))
    assert len(rec.requests) == 3
    for request in rec.requests:
        assert request.url.params["status"] == "FAIL"
        assert request.url.params["type"] == "preload"


def test_list_items_that_are_not_objects_are_skipped() -> None:
    client, _ = make_client(answer(200, {"tasks": [{"task_id": "a"}, "junk", 7, None, {"task_id": "b"}]}))
    assert [t.task_id for t in client.list_tasks(SHARE)] == ["a", "b"]


def test_list_tasks_raises_api_error_with_the_answer() -> None:
    client, _ = make_client(answer(400, sfs("SFS.TURBO.0001", "parameter error"), {"X-request-id": "rid-9"}))
    with pytest.raises(ApiError) as info:
        list(client.list_tasks(SHARE))
    assert not isinstance(info.value, ShareMissingError)
    assert info.value.answer.verdict is Verdict.PERMANENT
    text = str(info.value)
    assert text.startswith(f"GET {LIST_PATH}: HTTP 400")
    assert "SFS.TURBO.0001" in text
    assert "request_id=rid-9" in text


@pytest.mark.parametrize(
    ("status", "code"), [(400, "SFS.TURBO.0002"), (404, "SFS.TURBO.0002"), (403, "SFS.TURBO.9000")]
)
def test_list_tasks_of_a_missing_share_raises_share_missing(status: int, code: str) -> None:
    client, _ = make_client(answer(status, sfs(code)))
    with pytest.raises(ShareMissingError) as info:
        list(client.list_tasks(SHARE))
    assert info.value.answer.verdict is Verdict.SHARE_MISSING
    assert isinstance(info.value, ApiError)


# --- IDs: refused before anything is sent ---------------------------------------------------------


def test_a_bad_project_id_is_refused_when_the_client_is_made() -> None:
    with pytest.raises(InvalidIdError, match="project_id"):
        SfsTurboClient(
            ClientConfig(endpoint=ENDPOINT, project_id="../admin"), transport=httpx.MockTransport(answer(200))
        )


@pytest.mark.parametrize("bad", ["../x", "a/b", "%2F", "", "a b", "t\u00e2che"])
def test_bad_ids_never_reach_the_transport_or_the_pacer(bad: str) -> None:
    paced: list[int] = []
    client, rec = make_client(answer(202), pace=lambda: paced.append(1))
    with pytest.raises(InvalidIdError, match="task_id"):
        client.delete_task(SHARE, bad)
    with pytest.raises(InvalidIdError, match="share_id"):
        client.delete_task(bad, TASK)
    with pytest.raises(InvalidIdError, match="task_id"):
        client.show_task(SHARE, bad)
    with pytest.raises(InvalidIdError, match="share_id"):
        list(client.list_tasks(bad))
    assert rec.requests == []
    assert paced == []


_REFUSING_CLIENT: list[tuple[SfsTurboClient, Recorder]] = []


def _shared_client() -> tuple[SfsTurboClient, Recorder]:
    if not _REFUSING_CLIENT:
        _REFUSING_CLIENT.append(make_client(answer(202)))
    return _REFUSING_CLIENT[0]


@given(st.text(max_size=80))
def test_any_id_refused_is_never_sent_and_any_sent_is_plain(value: str) -> None:
    client, rec = _shared_client()
    before = len(rec.requests)
    try:
        client.delete_task(SHARE, value)
    except InvalidIdError:
        assert not PLAIN.fullmatch(value)
        assert len(rec.requests) == before
    else:
        assert PLAIN.fullmatch(value)
        assert len(rec.requests) == before + 1
        assert rec.requests[-1].url.raw_path.decode() == f"/v1/{PROJECT}/sfs-turbo/{SHARE}/hpc-cache/task/{value}"


# --- ClientConfig.from_settings -------------------------------------------------------------------


def test_client_config_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        api_endpoint=ENDPOINT,
        project_id=PROJECT,
        auth_token="t",
        list_page_size=250,
        http_connect_timeout_s=2,
        http_read_timeout_s=9,
        batch_concurrency=20,
    )
    config = ClientConfig.from_settings(settings)
    assert config == ClientConfig(
        endpoint=ENDPOINT,
        project_id=PROJECT,
        connect_timeout_s=2.0,
        read_timeout_s=9.0,
        page_size=250,
        max_connections=40,
    )
    assert ClientConfig.from_settings(settings, max_connections=3).max_connections == 3


def test_client_config_from_incomplete_settings_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError) as info:
        ClientConfig.from_settings(load_settings(auth_token="t"))
    assert [line.split(":", 1)[0] for line in info.value.lines] == [
        "SFS_CLEANUP_API_ENDPOINT",
        "SFS_CLEANUP_PROJECT_ID",
    ]


# --- parse_time -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T11:30:00", datetime(2024, 3, 1, 11, 30, tzinfo=UTC)),  # no zone: UTC
        ("2024-03-01T11:30:00Z", datetime(2024, 3, 1, 11, 30, tzinfo=UTC)),
        ("2024-03-01T11:30:00z", datetime(2024, 3, 1, 11, 30, tzinfo=UTC)),
        ("2024-03-01T11:30:00+00:00", datetime(2024, 3, 1, 11, 30, tzinfo=UTC)),
        ("2024-03-01T19:30:00+08:00", datetime(2024, 3, 1, 11, 30, tzinfo=UTC)),
        ("2024-03-01T06:30:00-05:00", datetime(2024, 3, 1, 11, 30, tzinfo=UTC)),
        ("2024-03-01T11:30:00.250000", datetime(2024, 3, 1, 11, 30, 0, 250000, tzinfo=UTC)),
        ("  2024-03-01T11:30:00  ", datetime(2024, 3, 1, 11, 30, tzinfo=UTC)),
    ],
)
def test_parse_time_good(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == timedelta(0)


def test_parse_time_without_zone_is_utc_not_local() -> None:
    parsed = parse_time("2024-03-01T11:30:00")
    assert parsed is not None
    assert parsed.tzinfo is not None
    assert parsed.astimezone(timezone(timedelta(hours=8))).hour == 19


@pytest.mark.parametrize(
    "value", [None, "", "   ", "N/A", "yesterday", "1970-13-45T99:99:99", "2024-02-30T00:00:00", 1709292600, 3.5, []]
)
def test_parse_time_unparsable_is_unknown(value: object) -> None:
    assert parse_time(value) is None
