"""What the client owes the fleet limiter and its own memory: a 401 renewal's resend takes a slot,
a listing's 429 slows the whole fleet, and an answer's body is read only up to a bound.

httpx.MockTransport stands in for the API and IAM; the limiter is a real one on the session's
Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from worker.api.answers import Verdict
from worker.api.auth import IamAuth, IamLogin, IamTokenProvider
from worker.api.client import ApiError, ClientConfig, SfsTurboClient
from worker.ratelimit import FleetLimiter

PROJECT = "0123456789abcdef0123456789abcdef"
SHARE = "5bc8fbbc-bde5-4099-8164-d8399f767c45"
TASK = "fedcba9876543210fedcba9876543210"
ENDPOINT = "https://sfs-turbo.cn-north-4.myhuaweicloud.com"
IAM = "https://iam.example.test"
MAX_BODY_BYTES = 1024 * 1024  # worker.api.client.MAX_BODY_BYTES, the documented bound
TOO_LARGE = "response.too_large"
KEY = f"sfs:rl:{PROJECT}:sfs-turbo.cn-north-4.myhuaweicloud.com:443"


class Events:
    """One ordered record of what the API saw and when the pace hook ran."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self._lock = threading.Lock()

    def add(self, what: str) -> None:
        with self._lock:
            self.log.append(what)

    def pace(self) -> None:
        self.add("pace")


def _iam(request: httpx.Request) -> httpx.Response:
    """IAM: every login hands out a new token, tok-1, tok-2, ..."""
    _iam.logins += 1  # type: ignore[attr-defined]
    now = time.time()
    iso = "%Y-%m-%dT%H:%M:%S.000000Z"
    body = {
        "token": {
            "expires_at": time.strftime(iso, time.gmtime(now + 86400)),
            "issued_at": time.strftime(iso, time.gmtime(now)),
        }
    }
    return httpx.Response(201, json=body, headers={"X-Subject-Token": f"tok-{_iam.logins}"})  # type: ignore[attr-defined]


def _iam_auth() -> IamAuth:
    _iam.logins = 0  # type: ignore[attr-defined]
    login = IamLogin(endpoint=IAM, user="robot", password=SecretStr("Pa55-word"), domain="acme", project_id=PROJECT)
    return IamAuth(IamTokenProvider(login, http=httpx.Client(transport=httpx.MockTransport(_iam))))


def _api_refusing_first_token(events: Events) -> httpx.MockTransport:
    def respond(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("X-Auth-Token")
        events.add(f"{request.method} {token}")
        if token == "tok-1":  # revoked early: the flow renews and sends again
            return httpx.Response(401, json={"error_code": "APIGW.0307", "error_msg": "token expired"})
        return httpx.Response(202)

    return httpx.MockTransport(respond)


def _client(transport: httpx.BaseTransport, **kwargs: Any) -> SfsTurboClient:
    config = ClientConfig(endpoint=ENDPOINT, project_id=PROJECT, page_size=2)
    return SfsTurboClient(config, transport=transport, **kwargs)


# --- (a) a 401 renewal's resend waits for the limiter ------------------------------------------
def test_the_resend_after_a_token_renewal_takes_a_slot_of_the_clients_pace() -> None:
    events = Events()
    client = _client(_api_refusing_first_token(events), auth=_iam_auth(), pace=events.pace)
    answer = client.delete_task(SHARE, TASK)
    assert answer.verdict is Verdict.OK
    assert events.log == ["pace", "DELETE tok-1", "pace", "DELETE tok-2"]


def test_a_caller_pacing_itself_passes_the_resend_pace() -> None:
    # The workers take the first slot themselves (a client without pace), and hand the limiter
    # to the call so that the resend takes its own.
    events = Events()
    client = _client(_api_refusing_first_token(events), auth=_iam_auth())
    answer = client.delete_task(SHARE, TASK, resend_pace=events.pace)
    assert answer.verdict is Verdict.OK
    assert events.log == ["DELETE tok-1", "pace", "DELETE tok-2"]


# --- (b) a listing's 429 slows the fleet, and each page takes a slot ---------------------------
class CountingLimiter(FleetLimiter):
    """The real limiter, counting the slots it hands out."""

    slots = 0

    def acquire(self, cancel: threading.Event | None = None) -> float:
        self.slots += 1
        return super().acquire() if cancel is None else super().acquire(cancel)


def _pages_after_a_429(retry_after: str) -> httpx.MockTransport:
    answered = {"429": False}

    def respond(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        if offset == 2 and not answered["429"]:
            answered["429"] = True
            return httpx.Response(
                429, json={"error_code": "APIGW.0308", "error_msg": "throttled"}, headers={"Retry-After": retry_after}
            )
        tasks = [{"task_id": f"{offset + i:032x}", "status": "SUCCESS"} for i in range(2 if offset < 4 else 1)]
        return httpx.Response(200, json={"tasks": tasks, "count": len(tasks)})

    return httpx.MockTransport(respond)


def test_the_resend_takes_a_real_limiter_slot(redis_client: redis.Redis) -> None:
    limiter = CountingLimiter(redis_client, key=KEY, rate=50.0, burst=1, wait_max_s=5.0, penalty_s=1.0)
    events = Events()
    client = _client(_api_refusing_first_token(events), auth=_iam_auth(), limiter=limiter)
    client.delete_task(SHARE, TASK)
    assert events.log == ["DELETE tok-1", "DELETE tok-2"]
    assert limiter.slots == 2


def test_a_listings_429_slows_the_whole_fleet(redis_client: redis.Redis) -> None:
    limiter = CountingLimiter(redis_client, key=KEY, rate=50.0, burst=5, wait_max_s=5.0, penalty_s=1.0)
    # The scheduler builds its listing client with pace=limiter.acquire (scheduler/context.py).
    client = _client(_pages_after_a_429("0.2"), pace=limiter.acquire)
    tasks = list(client.list_tasks(SHARE))
    assert len(tasks) == 5
    state = limiter.state()
    assert (state["throttled_count"], state["rate_cuts"]) == (1, 1)
    assert state["effective_rate"] < 50.0  # the fleet is on the recovery curve, for every worker
    assert limiter.slots == 4  # pages at offsets 0, 2 (429), 2 again, 4


def test_a_listing_that_cannot_get_a_slot_in_time_is_an_api_error(redis_client: redis.Redis) -> None:
    limiter = FleetLimiter(redis_client, key=KEY, rate=50.0, burst=5, wait_max_s=0.5, penalty_s=1.0)
    limiter.throttled(30.0)  # the fleet is paused far past this listing's wait bound
    client = _client(_pages_after_a_429("0"), limiter=limiter)
    with pytest.raises(ApiError) as caught:
        list(client.list_tasks(SHARE, retries=0))
    assert caught.value.answer.verdict is Verdict.THROTTLED


# --- (c) bodies are read up to a bound ----------------------------------------------------------
class Endless:
    """A body of ``total`` bytes in 64 KiB chunks, counting what was actually pulled."""

    def __init__(self, total: int, head: bytes = b"") -> None:
        self.total = total
        self.head = head
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = b"x" * 65536
        if self.head:
            self.pulled += len(self.head)
            yield self.head
        while self.pulled < self.total:
            self.pulled += len(chunk)
            yield chunk


@pytest.mark.parametrize("status", [202, 500])
def test_a_huge_body_is_not_read_whole_and_the_answer_is_unreadable(status: int) -> None:
    body = Endless(64 * MAX_BODY_BYTES)
    client = _client(httpx.MockTransport(lambda request: httpx.Response(status, content=body)))
    answer = client.delete_task(SHARE, TASK)
    assert body.pulled <= MAX_BODY_BYTES + 65536
    assert (answer.status, answer.verdict, answer.error_code) == (status, Verdict.RETRYABLE, TOO_LARGE)


def test_a_huge_listing_page_is_an_error_not_an_empty_page() -> None:
    body = Endless(8 * MAX_BODY_BYTES, head=b'{"tasks": [], "count": 0, "pad": "')
    client = _client(httpx.MockTransport(lambda request: httpx.Response(200, content=body)))
    with pytest.raises(ApiError) as caught:
        list(client.list_tasks(SHARE, retries=0))
    assert caught.value.answer.error_code == TOO_LARGE
    assert body.pulled <= MAX_BODY_BYTES + 65536


def test_the_bound_is_the_documented_one() -> None:
    from worker.api import client

    assert (client.MAX_BODY_BYTES, client.TOO_LARGE) == (MAX_BODY_BYTES, TOO_LARGE)


def test_a_body_at_the_bound_is_read() -> None:
    error = b'{"errCode": "SFS.TURBO.0106", "errMsg": "gone", "pad": "'
    body = error + b" " * (MAX_BODY_BYTES - len(error) - 2) + b'"}'
    assert len(body) == MAX_BODY_BYTES
    client = _client(httpx.MockTransport(lambda request: httpx.Response(400, content=body)))
    answer = client.delete_task(SHARE, TASK)
    assert (answer.verdict, answer.error_code) == (Verdict.GONE, "SFS.TURBO.0106")
