"""Share discovery over httpx.MockTransport: paging, selection, skipped shares and bad answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from scheduler.inventory import ListingUnreadableError, SkippedShare, discover, list_shares
from worker.api.client import ApiError, ClientConfig, CredentialsRefusedError, SfsTurboClient
from worker.settings import SettingsError, load_settings

PROJECT = "0123456789abcdef0123456789abcdef"
ENDPOINT = "https://sfs-turbo.cn-north-4.myhuaweicloud.com"
SHARES_PATH = f"/v1/{PROJECT}/sfs-turbo/shares/detail"


def share(n: int, *, status: Any = "200", name: str | None = None, eps: str | None = "0") -> dict[str, Any]:
    item: dict[str, Any] = {"id": f"00000000-0000-4000-8000-{n:012d}", "name": name or f"hpc-{n}", "status": status}
    if eps is not None:
        item["enterprise_project_id"] = eps
    return item


class Server:
    """Answers the share listing from ``shares`` by offset and limit; records every query."""

    def __init__(self, shares: list[dict[str, Any]], *, count_is_page: bool = False) -> None:
        self.shares = shares
        self.count_is_page = count_is_page
        self.queries: list[tuple[int, int]] = []
        self.answers: list[Callable[[httpx.Request], httpx.Response | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == SHARES_PATH
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        self.queries.append((offset, limit))
        if self.answers and (special := self.answers.pop(0)(request)) is not None:
            return special
        page = self.shares[offset : offset + limit]
        count = len(page) if self.count_is_page else len(self.shares)
        return httpx.Response(200, json={"shares": page, "count": count}, headers={"X-request-id": "r"})


def pager(server: Server) -> SfsTurboClient:
    return SfsTurboClient(ClientConfig(ENDPOINT, PROJECT), transport=httpx.MockTransport(server))


def no_sleep(_: float) -> None:
    pass


@pytest.mark.parametrize("count_is_page", [False, True])
def test_every_page_is_listed_until_a_short_page_whatever_count_means(count_is_page: bool) -> None:
    server = Server([share(n) for n in range(7)], count_is_page=count_is_page)
    listed = list(list_shares(pager(server), page_size=3))
    assert [entry.share_id for entry in listed] == [share(n)["id"] for n in range(7)]
    assert server.queries == [(0, 3), (3, 3), (6, 3)]


def test_an_exact_multiple_ends_on_the_empty_page() -> None:
    server = Server([share(n) for n in range(6)])
    assert len(list(list_shares(pager(server), page_size=3))) == 6
    assert server.queries == [(0, 3), (3, 3), (6, 3)]


def test_a_server_that_ignores_offset_is_refused_not_listed_forever() -> None:
    server = Server([share(n) for n in range(3)])
    server.answers = [lambda r: None] + [
        lambda r: httpx.Response(200, json={"shares": [share(n) for n in range(3)], "count": 9})
    ] * 3
    with pytest.raises(ListingUnreadableError, match="repeats shares"):
        list(list_shares(pager(server), page_size=3))


def test_only_available_matching_shares_are_selected_and_the_unavailable_say_why() -> None:
    shares = [
        share(1, name="hpc-a"),
        share(2, name="hpc-frozen", status="800"),
        share(3, name="scratch"),
        share(4, name="hpc-b", status=200),  # a number: read as the same code
        share(5, name="hpc-new", status="100"),
        share(6, name="hpc-odd", status="available"),
        share(7, name="hpc-nostatus", status=None),
        share(8, name="hpc-other-eps", eps="9b9d2b7d-4c0e-4b65-9d87-3f9a7a3b1f0e"),
        share(9, name="hpc-no-eps", eps=None),
    ]
    found = discover(pager(Server(shares)), page_size=100, pattern="hpc-*", enterprise_project_id="0")
    assert [s.name for s in found.selected] == ["hpc-a", "hpc-b"]
    reasons = {s.name: s.reason for s in found.skipped}
    assert reasons == {
        "hpc-frozen": "status 800 (FROZEN), not 200 (ACTIVE)",
        "hpc-new": "status 100 (CREATING), not 200 (ACTIVE)",
        "hpc-odd": "status 'available' (unknown), not 200 (ACTIVE)",
        "hpc-nostatus": "no status listed: not known to be available",
    }
    assert dict(found.not_matching) == {"name does not match the pattern": 1, "another enterprise project": 2}
    assert found.summary() == {
        "found": 9,
        "selected": 2,
        "not_matching": {"name does not match the pattern": 1, "another enterprise project": 2},
    }


def test_without_an_enterprise_project_every_available_share_matching_the_default_glob_is_selected() -> None:
    shares = [share(1), share(2, eps=None), share(3, status="303")]
    found = discover(pager(Server(shares)), page_size=100)
    assert found.share_ids == [share(1)["id"], share(2)["id"]]


def test_entries_that_are_not_shares_are_skipped_with_a_reason_and_nothing_of_them_is_trusted() -> None:
    shares = [share(1), "junk", {"id": "../../etc", "name": "evil", "status": "200"}, share(1)]
    listed = list(list_shares(pager(Server(shares)), page_size=100))
    skipped = [entry for entry in listed if isinstance(entry, SkippedShare)]
    assert [entry.reason for entry in skipped] == [
        "listed entry is not an object",
        "share id contains a path character '.'",
    ]
    assert all(entry.share_id.startswith("?") for entry in skipped)
    assert len(listed) == 3  # the repeated share is listed once


@pytest.mark.parametrize(
    "body",
    [b"<html>gateway</html>", b'{"count": 2}', b'{"shares": {"id": "x"}}', b"[]"],
)
def test_an_unreadable_listing_is_an_error_not_an_empty_project(body: bytes) -> None:
    server = Server([])
    server.answers = [lambda r: httpx.Response(200, content=body)]
    with pytest.raises(ListingUnreadableError, match="shares/detail"):
        discover(pager(server), page_size=10)


def test_5xx_and_429_are_retried_then_the_listing_goes_on() -> None:
    server = Server([share(1)])
    server.answers = [
        lambda r: httpx.Response(503, json={"error_code": "APIGW.0201", "error_msg": "down"}),
        lambda r: httpx.Response(429, json={"error_code": "APIGW.0308", "error_msg": "slow"}),
    ]
    waits: list[float] = []
    found = discover(pager(server), page_size=10, sleep=waits.append)
    assert found.share_ids == [share(1)["id"]] and len(waits) == 2


def test_an_outage_past_the_retries_raises_and_refused_credentials_say_so() -> None:
    server = Server([share(1)])
    server.answers = [lambda r: httpx.Response(500, json={"errCode": "SFS.TURBO.0005", "errMsg": "x"})] * 3
    with pytest.raises(ApiError, match=r"SFS\.TURBO\.0005"):
        discover(pager(server), page_size=10, retries=2, sleep=no_sleep)
    server = Server([share(1)])
    server.answers = [lambda r: httpx.Response(403, json={"error_code": "APIGW.0302", "error_msg": "no"})]
    with pytest.raises(CredentialsRefusedError):
        discover(pager(server), page_size=10, sleep=no_sleep)


def test_the_listing_request_is_the_documented_one() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=json.dumps({"shares": [], "count": 0}).encode())

    client = SfsTurboClient(ClientConfig(ENDPOINT, PROJECT), transport=httpx.MockTransport(record))
    assert discover(client, page_size=50).share_ids == []
    (request,) = seen
    assert request.method == "GET"
    assert str(request.url) == f"{ENDPOINT}{SHARES_PATH}?offset=0&limit=50"


def test_discovery_settings_are_checked() -> None:
    settings = load_settings(_env_file=None, share_name_pattern="hpc-[ab]*", share_enterprise_project_id="0")
    assert settings.share_name_pattern == "hpc-[ab]*"
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, share_name_pattern="a/b", share_enterprise_project_id="x y")
    text = str(caught.value)
    assert "SFS_CLEANUP_SHARE_NAME_PATTERN" in text and "SFS_CLEANUP_SHARE_ENTERPRISE_PROJECT_ID" in text


def test_a_reviewed_plan_records_the_discovery_settings_only_when_they_select() -> None:
    from scheduler.guard import settings_view

    found = settings_view(load_settings(_env_file=None, share_name_pattern="hpc-*"))
    assert found["SFS_CLEANUP_SHARE_NAME_PATTERN"] == "hpc-*"
    named = settings_view(load_settings(_env_file=None, share_ids="00000000-0000-4000-8000-000000000001"))
    assert "SFS_CLEANUP_SHARE_NAME_PATTERN" not in named
