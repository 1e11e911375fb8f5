"""The three authentication modes, with httpx.MockTransport standing in for IAM and the API."""

from __future__ import annotations

import json
import pickle
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr

from worker.api.auth import (
    NO_CREDENTIALS,
    AkSkAuth,
    AuthError,
    AuthUnavailableError,
    IamAuth,
    IamLogin,
    IamTokenProvider,
    TokenAuth,
    build_auth,
)
from worker.settings import Settings

PROJECT = "0123456789abcdef0123456789abcdef"
PASSWORD = "Pa55-word-never-shown"
API = "https://sfs-turbo.example.test"
IAM = "https://iam.example.test"
DELETE_URL = f"{API}/v1/{PROJECT}/sfs-turbo/share-1/hpc-cache/task/task-1"


def make_settings(**values: Any) -> Settings:
    return Settings(_env_file=None, api_endpoint=API, project_id=PROJECT, **values)


def iam_settings(**values: Any) -> Settings:
    return make_settings(iam_endpoint=IAM, iam_user="robot", iam_password=PASSWORD, iam_domain="acme", **values)


def gateway_401(code: str) -> httpx.Response:
    return httpx.Response(401, json={"error_code": code, "error_msg": "token bad", "request_id": "r1"})


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeIam:
    """IAM's token API: counts logins, hands out tok-1, tok-2, ... living ``lifetime`` seconds."""

    def __init__(self, *, lifetime: float = 86400.0, clock: Any = time.time, delay: float = 0.0) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self.delay = delay
        self.logins = 0
        self.bodies: list[Any] = []
        self.status = 201
        self.error: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.path == "/v3/auth/tokens"
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.logins += 1
            n = self.logins
            self.bodies.append(json.loads(request.content))
        if self.status != 201:
            return httpx.Response(self.status, json=self.error or {})
        now = self.clock()
        body = {"token": {"expires_at": iso(now + self.lifetime), "issued_at": iso(now), "methods": ["password"]}}
        return httpx.Response(201, json=body, headers={"X-Subject-Token": f"tok-{n}"})


class FakeApi:
    """The API: records X-Auth-Token of each call; answers 401 for tokens in ``reject``."""

    def __init__(self, reject: set[str] | None = None, code: str = "APIGW.0307") -> None:
        self.reject = reject if reject is not None else set()
        self.reject_all = False
        self.code = code
        self.seen: list[str | None] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("X-Auth-Token")
        self.seen.append(token)
        self.requests.append(request)
        if self.reject_all or token in self.reject:
            return gateway_401(self.code)
        return httpx.Response(202)


class Clock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def iam_client(iam: FakeIam) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(iam))


def api_client(auth: httpx.Auth, api: FakeApi) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(api), auth=auth)


def provider(iam: FakeIam, **kwargs: Any) -> IamTokenProvider:
    login = IamLogin(endpoint=IAM, user="robot", password=SecretStr(PASSWORD), domain="acme", project_id=PROJECT)
    return IamTokenProvider(login, http=iam_client(iam), **kwargs)


# --- none and token ---------------------------------------------------------------------------


def test_no_credentials() -> None:
    with pytest.raises(AuthError) as info:
        build_auth(make_settings())
    assert str(info.value) == NO_CREDENTIALS
    assert "SFS_CLEANUP_AUTH_TOKEN" in str(info.value)


def test_token_mode_sets_header_and_cannot_renew() -> None:
    auth = build_auth(make_settings(auth_token="ready-token-xyz"))
    assert isinstance(auth, TokenAuth)
    assert "ready-token-xyz" not in repr(auth)
    api = FakeApi(reject={"ready-token-xyz"})
    with api_client(auth, api) as client:
        response = client.delete(DELETE_URL)
    assert response.status_code == 401  # passed through unchanged
    assert api.seen == ["ready-token-xyz"]
    assert api.requests[0].headers["Content-Type"] == "application/json"


# --- AK/SK ------------------------------------------------------------------------------------


def test_aksk_mode_signs_verifiably() -> None:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest

    auth = build_auth(make_settings(access_key="AKTEST", secret_key="SK-secret-1", security_token="STS-tok-1"))
    assert isinstance(auth, AkSkAuth)
    assert "SK-secret-1" not in repr(auth) and "STS-tok-1" not in repr(auth)
    api = FakeApi()
    with api_client(auth, api) as client:
        assert client.delete(DELETE_URL, params={"x": "a b"}).status_code == 202
    sent = api.requests[0]
    headers = sent.headers
    assert headers["X-Project-Id"] == PROJECT
    assert headers["X-Security-Token"] == "STS-tok-1"
    assert headers["Content-Type"] == "application/json"
    assert len(headers["X-Sdk-Date"]) == 16 and headers["X-Sdk-Date"].endswith("Z")
    assert headers["Authorization"].startswith("SDK-HMAC-SHA256 Access=AKTEST, SignedHeaders=")
    assert "X-Auth-Token" not in headers

    # Verify as a gateway would: rebuild the request from what was received, sign it with the
    # official SDK using the signed headers named in Authorization, compare.
    signed_names = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    # BasicCredentials add X-Project-Id and X-Security-Token themselves.
    header_params = {n: headers[n] for n in signed_names if n not in ("x-project-id", "x-security-token")}
    sdk_request = SdkRequest(
        method=sent.method,
        schema=sent.url.scheme,
        host=sent.url.netloc.decode(),
        resource_path=sent.url.path,
        query_params=list(sent.url.params.multi_items()),
        header_params=header_params,
        body=sent.content or None,
    )
    creds = BasicCredentials("AKTEST", "SK-secret-1", PROJECT).with_security_token("STS-tok-1")
    creds.sign_request(sdk_request)
    assert sdk_request.header_params["Authorization"] == headers["Authorization"]


# --- IAM: login, retry on 401 -------------------------------------------------------------------


def test_iam_login_body_exactly_as_the_reference() -> None:
    iam = FakeIam()
    auth = build_auth(iam_settings(), http=iam_client(iam))
    assert isinstance(auth, IamAuth)
    api = FakeApi()
    with api_client(auth, api) as client:
        assert client.delete(DELETE_URL).status_code == 202
        assert client.delete(DELETE_URL).status_code == 202
    assert iam.logins == 1  # cached in memory
    assert api.seen == ["tok-1", "tok-1"]
    assert api.requests[0].headers["Content-Type"] == "application/json"
    assert iam.bodies[0] == {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": "robot", "password": PASSWORD, "domain": {"name": "acme"}}},
            },
            "scope": {"project": {"id": PROJECT}},
        }
    }


@pytest.mark.parametrize("code", ["APIGW.0307", "APIGW.0301", "APIG.0307"])
def test_expired_token_is_renewed_once_and_the_request_retried(code: str) -> None:
    iam = FakeIam()
    auth = build_auth(iam_settings(), http=iam_client(iam))
    api = FakeApi(reject={"tok-1"}, code=code)
    with api_client(auth, api) as client:
        response = client.delete(DELETE_URL)
        assert response.status_code == 202
        assert iam.logins == 2
        assert api.seen == ["tok-1", "tok-2"]
        # The new token is kept: no further logins.
        assert client.delete(DELETE_URL).status_code == 202
    assert iam.logins == 2


def test_second_401_passes_through() -> None:
    iam = FakeIam()
    auth = build_auth(iam_settings(), http=iam_client(iam))
    api = FakeApi()
    api.reject_all = True
    with api_client(auth, api) as client:
        response = client.delete(DELETE_URL)
    assert response.status_code == 401
    assert response.json()["error_code"] == "APIGW.0307"
    assert iam.logins == 2  # one login, one renewal, no more
    assert api.seen == ["tok-1", "tok-2"]


def test_refused_fresh_renewal_is_not_renewed_again_soon() -> None:
    # The API refuses every token (a revoked user, say): after one renewal, calls do not each
    # log in again, which would hammer IAM fleet-wide; after the cool-down, one more try.
    clock = Clock()
    iam = FakeIam(clock=clock)
    auth = IamAuth(provider(iam, clock=clock, rejection_cooldown_s=60))
    api = FakeApi()
    api.reject_all = True
    with api_client(auth, api) as client:
        assert client.delete(DELETE_URL).status_code == 401
        assert iam.logins == 2
        for _ in range(5):
            assert client.delete(DELETE_URL).status_code == 401
        assert iam.logins == 2
        assert api.seen == ["tok-1", "tok-2"] + ["tok-2"] * 5  # no pointless retries either
        clock.now += 61
        assert client.delete(DELETE_URL).status_code == 401
        assert iam.logins == 3
        assert api.seen[-2:] == ["tok-2", "tok-3"]


def test_other_401_is_not_renewed() -> None:
    iam = FakeIam()
    auth = build_auth(iam_settings(), http=iam_client(iam))
    api = FakeApi(reject={"tok-1"}, code="APIGW.0305")
    with api_client(auth, api) as client:
        assert client.delete(DELETE_URL).status_code == 401
    assert iam.logins == 1
    assert api.seen == ["tok-1"]


def test_concurrent_401s_in_one_process_renew_once() -> None:
    iam = FakeIam()
    p = provider(iam)
    assert p.token() == "tok-1"
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(p.renew(rejected="tok-1"))) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["tok-2"] * 10
    assert iam.logins == 2


# --- IAM: refused login ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "must_name"),
    [
        (401, ["SFS_CLEANUP_IAM_USER", "SFS_CLEANUP_IAM_PASSWORD", "SFS_CLEANUP_IAM_DOMAIN"]),
        (400, ["SFS_CLEANUP_PROJECT_ID"]),
        (403, ["SFS_CLEANUP_IAM_USER", "SFS_CLEANUP_PROJECT_ID"]),
        (404, ["SFS_CLEANUP_IAM_ENDPOINT"]),
    ],
)
def test_refused_login_says_what_to_fix(status: int, must_name: list[str]) -> None:
    iam = FakeIam()
    iam.status = status
    # IAM echoing the password would be unusual; the message is scrubbed anyway.
    iam.error = {"error": {"code": status, "message": f"The username or password is wrong ({PASSWORD}).\nx"}}
    auth = build_auth(iam_settings(), http=iam_client(iam))
    api = FakeApi()
    with structlog.testing.capture_logs() as logs, api_client(auth, api) as client:
        with pytest.raises(AuthError) as info:
            client.delete(DELETE_URL)
        # Remembered: parallel calls do not each ask IAM again.
        for _ in range(5):
            with pytest.raises(AuthError):
                client.delete(DELETE_URL)
    text = str(info.value)
    assert type(info.value) is AuthError
    assert "\n" not in text
    assert PASSWORD not in text
    assert f"HTTP {status}" in text
    for name in must_name:
        assert name in text
    assert iam.logins == 1
    assert api.seen == []
    assert PASSWORD not in repr(logs)
    # Survives Celery's pickling.
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is AuthError and str(again) == text


def test_refusal_is_forgotten_after_a_while() -> None:
    iam = FakeIam()
    iam.status = 401
    p = provider(iam, refused_ttl_s=0.2)
    with pytest.raises(AuthError):
        p.token()
    with pytest.raises(AuthError):
        p.token()
    assert iam.logins == 1
    time.sleep(0.25)
    iam.status = 201
    assert p.token() == "tok-2"


def test_unreachable_or_failing_iam_is_transient() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    login = IamLogin(endpoint=IAM, user="u", password=SecretStr(PASSWORD), domain="d", project_id=PROJECT)
    p = IamTokenProvider(login, http=httpx.Client(transport=httpx.MockTransport(down)))
    with pytest.raises(AuthUnavailableError) as info:
        p.token()
    assert "SFS_CLEANUP_IAM_ENDPOINT" in str(info.value) and PASSWORD not in str(info.value)
    assert isinstance(pickle.loads(pickle.dumps(info.value)), AuthUnavailableError)

    iam = FakeIam()
    iam.status = 503
    with pytest.raises(AuthUnavailableError, match="HTTP 503"):
        provider(iam).token()


def test_answer_without_token_is_an_error() -> None:
    def wrong(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"hello": "world"})

    login = IamLogin(endpoint=IAM, user="u", password=SecretStr(PASSWORD), domain="d", project_id=PROJECT)
    p = IamTokenProvider(login, http=httpx.Client(transport=httpx.MockTransport(wrong)))
    with pytest.raises(AuthError, match="X-Subject-Token"):
        p.token()


# --- IAM: renewal ---------------------------------------------------------------------------------


def test_renewed_before_expiry_with_a_24h_token() -> None:
    clock = Clock()
    iam = FakeIam(clock=clock)
    p = provider(iam, clock=clock, renew_before_s=3600)
    assert p.token() == "tok-1"
    clock.now += 86400 - 3600 - 1  # just more than an hour left
    assert p.token() == "tok-1"
    clock.now += 2  # less than an hour left: renew
    assert p.token() == "tok-2"
    assert iam.logins == 2


def test_short_lived_token_renewed_at_a_third_of_its_life() -> None:
    clock = Clock()
    iam = FakeIam(clock=clock, lifetime=9.0)
    p = provider(iam, clock=clock, renew_before_s=3600)
    assert p.token() == "tok-1"
    clock.now += 5.9  # 3.1 s left of 9: still fresh
    assert p.token() == "tok-1"
    clock.now += 0.2  # 2.9 s left: renew
    assert p.token() == "tok-2"
    assert iam.logins == 2


def test_skewed_clock_does_not_expire_a_fresh_token() -> None:
    clock = Clock()
    iam = FakeIam(clock=lambda: clock.now - 7200.0)  # IAM's clock two hours behind ours
    p = provider(iam, clock=clock, renew_before_s=600)
    assert p.token() == "tok-1"
    clock.now += 3600
    assert p.token() == "tok-1"
    assert iam.logins == 1


def test_failed_renewal_keeps_using_a_valid_token() -> None:
    clock = Clock()
    iam = FakeIam(clock=clock, lifetime=100.0)
    p = provider(iam, clock=clock)
    assert p.token() == "tok-1"
    clock.now += 80  # due for renewal (20 s left, a third is 33 s)
    iam.status = 503
    with structlog.testing.capture_logs() as logs:
        assert p.token() == "tok-1"
    assert any(entry["event"].startswith("iam token renewal failed") for entry in logs)
    clock.now += 25  # expired now: the failure (remembered for a few seconds) surfaces
    with pytest.raises(AuthUnavailableError):
        p.token()


def test_many_threads_one_login() -> None:
    iam = FakeIam(delay=0.2)
    p = provider(iam)
    barrier = threading.Barrier(20)
    results: list[str] = []

    def work() -> None:
        barrier.wait()
        results.append(p.token())

    threads = [threading.Thread(target=work) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["tok-1"] * 20
    assert iam.logins == 1


# --- Secrets ------------------------------------------------------------------------------------


def test_no_secret_in_reprs_or_logs() -> None:
    iam = FakeIam()
    with structlog.testing.capture_logs() as logs:
        auth = build_auth(iam_settings(), http=iam_client(iam))
        assert isinstance(auth, IamAuth)
        token = auth.provider.token()
        cached = auth.provider._current
    assert any(entry["event"] == "iam token fetched" and "expires_at" in entry for entry in logs)
    for text in (repr(auth), repr(auth.provider), repr(cached), repr(logs)):
        assert token not in text
        assert PASSWORD not in text
    login = IamLogin(endpoint=IAM, user="u", password=SecretStr(PASSWORD), domain="d", project_id=PROJECT)
    assert PASSWORD not in repr(login)


async def _async_delete(auth: httpx.Auth, api: FakeApi) -> int:
    async with httpx.AsyncClient(transport=httpx.MockTransport(api), auth=auth) as client:
        return (await client.delete(DELETE_URL)).status_code


def test_async_client_renews_too() -> None:
    import asyncio

    iam = FakeIam()
    auth = build_auth(iam_settings(), http=iam_client(iam))
    api = FakeApi(reject={"tok-1"})
    assert asyncio.run(_async_delete(auth, api)) == 202
    assert api.seen == ["tok-1", "tok-2"]
