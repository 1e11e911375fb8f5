"""The fake gateway's SDK-HMAC-SHA256 verifier: the reference's vector, each refusal, and the SDK as oracle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.fakeapi import signature
from sandbox.fakeapi.signature import SignatureError, verify

VECTOR_HEADERS = {
    "content-type": "application/json",
    "host": "sfs-turbo.cn-north-4.myhuaweicloud.com",
    "x-project-id": "pid0",
    "x-sdk-date": "20240101T000000Z",
}
VECTOR_PATH = "/v1/pid0/sfs-turbo/s1/hpc-cache/task/t1"
VECTOR_SIGNED = "content-type;host;x-project-id;x-sdk-date"
VECTOR_SIGNATURE = "65040287707b34be770fc7a46d16c7fa9f5a283c4d38de65eb7615899b8530ba"
VECTOR_NOW = datetime(2024, 1, 1, tzinfo=UTC)
SECRETS = {"AKEXAMPLE": "SKEXAMPLE"}


def vector_headers(**changes: str) -> dict[str, str]:
    headers = {
        **VECTOR_HEADERS,
        "authorization": (
            f"SDK-HMAC-SHA256 Access=AKEXAMPLE, SignedHeaders={VECTOR_SIGNED}, Signature={VECTOR_SIGNATURE}"
        ),
    }
    headers.update(changes)
    return headers


def check(headers: dict[str, str], *, now: datetime = VECTOR_NOW, secrets: dict[str, str] = SECRETS) -> str:
    return verify(
        method="DELETE",
        raw_path=VECTOR_PATH,
        raw_query="",
        headers=headers,
        body=b"",
        secret_for=secrets.get,
        now=now,
    )


# --- The reference's test vector ------------------------------------------------------------


def test_vector_canonical_request_and_signature() -> None:
    text = signature.canonical_request(
        "DELETE",
        VECTOR_PATH,
        "",
        headers=VECTOR_HEADERS,
        signed_headers=VECTOR_SIGNED.split(";"),
        body_hash=signature.EMPTY_SHA256,
    )
    assert text.splitlines()[1] == VECTOR_PATH + "/"  # trailing slash, for signing only
    to_sign = signature.string_to_sign("20240101T000000Z", text)
    assert to_sign.endswith("797cfabb64a3e9cec73405c3a7229ba77ef107a6fdfd02076b253b1ceb081ca6")
    assert signature.signature("SKEXAMPLE", to_sign) == VECTOR_SIGNATURE


def test_vector_verifies() -> None:
    assert check(vector_headers()) == "AKEXAMPLE"


def test_header_names_are_case_insensitive_in_signed_headers() -> None:
    headers = vector_headers()
    headers["authorization"] = headers["authorization"].replace(VECTOR_SIGNED, VECTOR_SIGNED.upper())
    assert check(headers) == "AKEXAMPLE"


# --- Refusals ---------------------------------------------------------------------------------


def refusal(headers: dict[str, str], **kwargs: object) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        check(headers, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_unknown_access_key() -> None:
    failure = refusal(vector_headers(), secrets={"OTHER": "SKEXAMPLE"})
    assert (failure.status, failure.code) == (401, "APIGW.0301")
    assert "ak not exist" in failure.message


def test_wrong_secret_key() -> None:
    failure = refusal(vector_headers(), secrets={"AKEXAMPLE": "WRONG"})
    assert (failure.status, failure.code) == (401, "APIGW.0301")
    assert "verify aksk signature fail" in failure.message


@pytest.mark.parametrize(
    "changed",
    [
        {"host": "sfs-turbo.cn-north-4.myhuaweicloud.com:8443"},  # the port is part of the signed host
        {"x-project-id": "pid1"},
        {"content-type": "text/plain"},
    ],
)
def test_a_changed_signed_header_breaks_the_signature(changed: dict[str, str]) -> None:
    assert refusal(vector_headers(**changed)).code == "APIGW.0301"


def test_a_changed_path_breaks_the_signature() -> None:
    with pytest.raises(SignatureError, match="signature fail"):
        verify(
            method="DELETE",
            raw_path=VECTOR_PATH.replace("t1", "t2"),
            raw_query="",
            headers=vector_headers(),
            body=b"",
            secret_for=SECRETS.get,
            now=VECTOR_NOW,
        )


def test_missing_signed_header_is_a_bad_signature() -> None:
    headers = vector_headers()
    del headers["x-project-id"]
    assert refusal(headers).code == "APIGW.0301"


@pytest.mark.parametrize("skew", [timedelta(minutes=16), -timedelta(minutes=16)])
def test_date_more_than_15_minutes_off_is_refused(skew: timedelta) -> None:
    failure = refusal(vector_headers(), now=VECTOR_NOW + skew)
    assert (failure.status, failure.code) == (401, "APIGW.0303")


def test_date_within_15_minutes_is_accepted() -> None:
    assert check(vector_headers(), now=VECTOR_NOW + timedelta(minutes=14)) == "AKEXAMPLE"


def test_garbled_date_is_refused() -> None:
    assert refusal(vector_headers(**{"x-sdk-date": "2024-01-01 00:00"})).code == "APIGW.0303"


@pytest.mark.parametrize("value", ["", "SDK-HMAC-SHA256 Access=AKEXAMPLE", "Bearer abc"])
def test_malformed_authorization_is_refused(value: str) -> None:
    assert refusal(vector_headers(authorization=value)).code == "APIGW.0301"


def test_temporary_credentials_need_their_signed_security_token() -> None:
    base = {"Content-Type": "application/json", "X-Project-Id": "pid0"}
    url = "http://127.0.0.1:8080/v1/pid0/sfs-turbo/s1/hpc-cache/tasks?limit=5"

    def signed(extra: dict[str, str]) -> dict[str, str]:
        headers = signature.sign_headers(
            method="GET",
            url=url,
            headers={**base, **extra},
            body=b"",
            access_key="TMPAK",
            secret_key="TMPSK",
            now=VECTOR_NOW,
        )
        return {name.lower(): value for name, value in headers.items()}

    def run(headers: dict[str, str]) -> str:
        return verify(
            method="GET",
            raw_path="/v1/pid0/sfs-turbo/s1/hpc-cache/tasks",
            raw_query="limit=5",
            headers=headers,
            body=b"",
            secret_for={"TMPAK": "TMPSK"}.get,
            security_token_for={"TMPAK": "sts-token"}.get,
            now=VECTOR_NOW,
        )

    assert run(signed({"X-Security-Token": "sts-token"})) == "TMPAK"
    with pytest.raises(SignatureError):
        run(signed({}))
    with pytest.raises(SignatureError):
        run(signed({"X-Security-Token": "another-token"}))


# --- Canonical forms -------------------------------------------------------------------------


def test_canonical_uri_encodes_each_segment() -> None:
    assert signature.canonical_uri("/v1/p/sfs-turbo/s%201%2Fx/task/t%3F1") == "/v1/p/sfs-turbo/s%201%2Fx/task/t%3F1/"
    assert signature.canonical_uri("/a b/~c/") == "/a%20b/~c/"


def test_canonical_query_sorts_and_encodes() -> None:
    pairs = signature.query_pairs("type=import&limit=10&status=&end_time=2024-02-01+00%3A00%3A00&a=%2B")
    assert signature.canonical_query(pairs) == ("a=%2B&end_time=2024-02-01%2000%3A00%3A00&limit=10&status=&type=import")


# --- The official SDK as the oracle ----------------------------------------------------------

sdk_credentials = pytest.importorskip("huaweicloudsdkcore.auth.credentials")
from huaweicloudsdkcore.sdk_request import SdkRequest  # noqa: E402

_segment = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\x00", categories=("L", "M", "N", "P", "S", "Zs")),
    min_size=1,
    max_size=12,
)
_query = st.lists(
    st.tuples(st.sampled_from(["type", "status", "offset", "limit", "start_time", "x y"]), _segment),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    share=_segment,
    task=_segment,
    query=_query,
    body=st.binary(max_size=64),
    method=st.sampled_from(["GET", "DELETE", "POST"]),
)
def test_requests_signed_by_the_sdk_verify(
    share: str, task: str, query: list[tuple[str, str]], body: bytes, method: str
) -> None:
    resource_path = f"/v1/pid0/sfs-turbo/{quote(share, safe='')}/hpc-cache/task/{quote(task, safe='')}"
    request = SdkRequest(
        method=method,
        schema="http",
        host="127.0.0.1:18080",
        resource_path=resource_path,
        query_params=list(query),
        header_params={"Content-Type": "application/json", "X-Sdk-Date": "20240101T000000Z"},
        body=body or None,
    )
    sdk_credentials.BasicCredentials("AKSDK", "SKSDK", "pid0").sign_request(request)
    headers = {name.lower(): str(value) for name, value in request.header_params.items()}
    wire_path, _, wire_query = request.uri.partition("?")
    assert (
        verify(
            method=method,
            raw_path=wire_path,
            raw_query=wire_query,
            headers=headers,
            body=body,
            secret_for={"AKSDK": "SKSDK"}.get,
            now=VECTOR_NOW,
        )
        == "AKSDK"
    )
    with pytest.raises(SignatureError):
        verify(
            method=method,
            raw_path=wire_path,
            raw_query=wire_query,
            headers=headers,
            body=body + b"x",
            secret_for={"AKSDK": "SKSDK"}.get,
            now=VECTOR_NOW,
        )
