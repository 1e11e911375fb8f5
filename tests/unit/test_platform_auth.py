"""The ``metadata`` mode with httpx.MockTransport standing in for the metadata service and the API:
the SDK's two-step request, the answers it may give, renewal, signing and what is never shown."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from worker.api.auth import (
    AuthError,
    AuthUnavailableError,
    PlatformAuth,
    PlatformCredentialProvider,
    build_auth,
)
from worker.api.auth.metadata_fetch import fetch_credentials
from worker.api.signer import AkSkCredentials, sign
from worker.settings import Settings, SettingsError, load_settings

PROJECT = "0123456789abcdef0123456789abcdef"
API = "https://sfs-turbo.example.test"
META = "http://metadata.example.test/openstack/latest/securitykey"
TOKEN_URL = "http://metadata.example.test/meta-data/latest/api/token"
DELETE_URL = f"{API}/v1/{PROJECT}/sfs-turbo/share-1/hpc-cache/task/task-1"
SECRET = "SkTemp+/Secret=NeverShown"
SECURITY = "StTemp+/SecurityToken=NeverShown"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Metadata:
    """The metadata service: session tokens (optional), then AKTMP1, AKTMP2... living ``lifetime``."""

    def __init__(self, *, lifetime: float = 3600.0, session: bool = True, clock: Any = time.time) -> None:
        self.lifetime, self.session, self.clock = lifetime, session, clock
        self.fetches = 0
        self.requests: list[httpx.Request] = []
        self.answer: httpx.Response | None = None  # instead of credentials, once
        self.date_offset_s = 0.0  # the metadata service's clock minus ours

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if str(request.url) == TOKEN_URL:
            assert request.method == "PUT" and request.headers["X-Metadata-Token-Ttl-Seconds"] == "21600"
            return httpx.Response(200, text="sess-1") if self.session else httpx.Response(404)
        assert str(request.url) == META and request.method == "GET"
        if self.session and request.headers.get("X-Metadata-Token") != "sess-1":
            return httpx.Response(401, text="401 Unauthorized")
        if self.answer is not None:
            answer, self.answer = self.answer, None
            return answer
        self.fetches += 1
        server_now = self.clock() + self.date_offset_s
        body = {
            "credential": {
                "access": f"AKTMP{self.fetches}",
                "secret": SECRET,
                "securitytoken": SECURITY,
                "expires_at": iso(server_now + self.lifetime),
            }
        }
        date = format_datetime(datetime.fromtimestamp(server_now, UTC), usegmt=True)
        return httpx.Response(200, json=body, headers={"Date": date})


def http_for(service: Metadata) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(service))


def test_the_sdk_request_session_token_then_securitykey() -> None:
    service = Metadata()
    creds = fetch_credentials(META, http_for(service), time.time)
    assert [r.method for r in service.requests] == ["PUT", "GET"]
    assert service.requests[1].headers["X-Metadata-Token"] == "sess-1"
    assert creds.access_key == "AKTMP1"
    assert creds.secret_key.get_secret_value() == SECRET
    assert creds.security_token.get_secret_value() == SECURITY
    assert 3590 < creds.lifetime <= 3601


def test_a_metadata_service_without_session_tokens_is_asked_without_one() -> None:
    service = Metadata(session=False)
    assert fetch_credentials(META, http_for(service), time.time).access_key == "AKTMP1"
    assert "X-Metadata-Token" not in service.requests[1].headers


def test_the_lifetime_is_measured_on_the_metadata_services_clock() -> None:
    service = Metadata(lifetime=3600)
    service.date_offset_s = 7200.0  # its clock two hours ahead of ours: expires_at looks far off
    creds = fetch_credentials(META, http_for(service), time.time)
    assert 3590 < creds.lifetime <= 3601


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        (httpx.Response(401, text="Please configure Cloud Service Agency first"), AuthError, "no agency"),
        (httpx.Response(404, text="nope"), AuthError, "SFS_CLEANUP_METADATA_URL"),
        (httpx.Response(503, text="busy"), AuthUnavailableError, "HTTP 503"),
        (httpx.Response(200, json={"credential": {"access": "AK"}}), AuthError, "lacks secret, securitytoken"),
        (httpx.Response(200, text="<html>"), AuthError, "no 'credential'"),
        (
            httpx.Response(
                200, json={"credential": {"access": "A", "secret": "s", "securitytoken": "t", "expires_at": iso(0)}}
            ),
            AuthError,
            "already expired",
        ),
    ],
)
def test_bad_answers_say_what_to_fix_and_never_echo_a_secret(
    answer: httpx.Response, error: type[Exception], text: str
) -> None:
    service = Metadata()
    service.answer = answer
    with pytest.raises(error, match=text) as caught:
        fetch_credentials(META, http_for(service), time.time)
    assert SECRET not in str(caught.value) and SECURITY not in str(caught.value)


def test_no_metadata_service_is_unavailable_not_refused() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(AuthUnavailableError, match="no answer from the metadata service"):
        fetch_credentials(META, httpx.Client(transport=httpx.MockTransport(down)), time.time)


def test_credentials_are_renewed_before_they_expire_and_kept_until_then() -> None:
    now = [1_000_000.0]
    service = Metadata(lifetime=900, clock=lambda: now[0])
    provider = PlatformCredentialProvider(META, http=http_for(service), renew_before_s=300, clock=lambda: now[0])
    assert provider.credentials().access_key == "AKTMP1"
    now[0] += 599  # 301 s left: still fresh (renewal at min(300, 900 / 3) = 300 s left)
    assert provider.credentials().access_key == "AKTMP1"
    now[0] += 2  # 299 s left: renewed, before the old ones expire
    assert provider.credentials().access_key == "AKTMP2"
    assert service.fetches == 2


def test_a_failed_renewal_keeps_the_valid_credentials() -> None:
    now = [1_000_000.0]
    service = Metadata(lifetime=900, clock=lambda: now[0])
    provider = PlatformCredentialProvider(META, http=http_for(service), renew_before_s=300, clock=lambda: now[0])
    provider.credentials()
    now[0] += 700
    service.answer = httpx.Response(500)
    assert provider.credentials().access_key == "AKTMP1"  # due, the renewal failed, still valid
    now[0] += 250  # expired
    service.answer = httpx.Response(500)
    with pytest.raises(AuthUnavailableError):
        provider.credentials()


def test_requests_are_signed_with_the_security_token_and_a_refused_key_is_replaced_once() -> None:
    now = [1_000_000.0]
    service = Metadata(lifetime=3600, clock=lambda: now[0])
    provider = PlatformCredentialProvider(META, http=http_for(service), clock=lambda: now[0])
    seen: list[httpx.Headers] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(httpx.Headers(request.headers))  # a resend is the same request, signed again
        if "AKTMP1" in request.headers["Authorization"]:
            return httpx.Response(401, json={"error_code": "APIGW.0307", "error_msg": "expired"})
        return httpx.Response(202)

    auth = PlatformAuth(provider, PROJECT)
    client = httpx.Client(transport=httpx.MockTransport(api), auth=auth)
    assert client.delete(DELETE_URL).status_code == 401  # AKTMP1 was fetched just now: not replaced
    now[0] += 60
    assert client.delete(DELETE_URL).status_code == 202  # older: replaced once, signed again
    first, second, third = seen
    assert "Access=AKTMP1," in first["Authorization"] and "Access=AKTMP1," in second["Authorization"]
    assert "Access=AKTMP2," in third["Authorization"]
    assert third["X-Security-Token"] == SECURITY
    assert "x-security-token" in third["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    # The signature is the signer's own, with the temporary credentials.
    expected = httpx.Request("DELETE", DELETE_URL, headers=dict(third.items()))
    creds = AkSkCredentials("AKTMP2", SecretStr(SECRET), SecretStr(SECURITY))
    sign(expected, creds, PROJECT)
    assert expected.headers["Authorization"] == third["Authorization"]
    assert service.fetches == 2


def test_settings_build_the_mode_and_nothing_secret_is_in_reprs() -> None:
    settings = Settings(
        _env_file=None,
        api_endpoint=API,
        project_id=PROJECT,
        metadata_credentials=True,
        metadata_url=META,
        metadata_cache_key=SecretStr("k" * 40),
    )
    assert settings.auth_mode == "metadata"
    service = Metadata()
    auth = build_auth(settings, None, http=http_for(service))
    assert isinstance(auth, PlatformAuth)
    creds = auth.provider.credentials()
    shown = " ".join([repr(auth), repr(creds), repr(creds.signing()), repr(settings), str(settings)])
    assert SECRET not in shown and SECURITY not in shown and "k" * 40 not in shown


def test_the_mode_is_exclusive_and_the_cache_key_is_a_real_one() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, metadata_credentials=True, auth_token="t")
    assert "set exactly one of" in str(caught.value) and "METADATA_CREDENTIALS" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, metadata_credentials=True, metadata_cache_key="short-Secret-Value")
    assert "SFS_CLEANUP_METADATA_CACHE_KEY: must be at least 32 characters" in str(caught.value)
    assert "short-Secret-Value" not in str(caught.value)


def test_the_assume_role_call_is_iams_signed_with_the_platform_credentials() -> None:
    from worker.api.auth.agency import AssumeRoleSource

    seen: list[httpx.Request] = []

    def iam(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        credential = {"access": "AKAGY1", "secret": "s2", "securitytoken": "t2", "expires_at": iso(time.time() + 900)}
        return httpx.Response(201, json={"credential": credential})

    caller = fetch_credentials(META, http_for(Metadata()), time.time)
    source = AssumeRoleSource("https://iam.example.test", "other", "cleanup", 3600, caller=lambda: caller)
    creds = source.fetch(httpx.Client(transport=httpx.MockTransport(iam)), time.time)
    assert creds.access_key == "AKAGY1" and 890 < creds.lifetime <= 901
    (request,) = seen
    assert str(request.url) == "https://iam.example.test/v3.0/OS-CREDENTIAL/securitytokens"
    assert json.loads(request.content) == {
        "auth": {
            "identity": {
                "methods": ["assume_role"],
                "assume_role": {"domain_name": "other", "agency_name": "cleanup", "duration_seconds": 3600},
            }
        }
    }
    assert "Access=AKTMP1," in request.headers["Authorization"]
    assert request.headers["X-Security-Token"] == SECURITY
    assert "X-Project-Id" not in request.headers  # IAM's calls are not scoped to a project
    assert "x-project-id" not in request.headers["Authorization"]
    # The gateway's check (the fake's verifier) accepts it, security token included.
    from sandbox.fakeapi.signature import verify

    verified = verify(
        method="POST",
        raw_path=request.url.raw_path.decode(),
        raw_query="",
        headers={k.lower(): v for k, v in request.headers.items()},
        body=request.content,
        secret_for={"AKTMP1": SECRET}.get,
        security_token_for={"AKTMP1": SECURITY}.get,
        now=datetime.now(UTC),
    )
    assert verified == "AKTMP1"


def test_an_agency_needs_all_its_settings_and_the_platform_credentials() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, agency_name="cleanup")
    text = str(caught.value)
    assert "needs all of SFS_CLEANUP_AGENCY_DOMAIN" in text and "set SFS_CLEANUP_METADATA_CREDENTIALS" in text


def test_a_refusal_is_remembered_so_threads_do_not_hammer_the_metadata_service() -> None:
    service = Metadata()
    service.answer = httpx.Response(401, text="Please configure Cloud Service Agency first")
    provider = PlatformCredentialProvider(META, http=http_for(service))
    for _ in range(5):
        with pytest.raises(AuthError, match="no agency"):
            provider.credentials()
    assert sum(1 for r in service.requests if r.method == "GET") == 1
