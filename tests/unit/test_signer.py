"""The AK/SK signer against the official SDK's signer (the oracle) and the reference's vector."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from worker.api import signer
from worker.api.signer import AkSkCredentials, sign

sdk_signer = pytest.importorskip("huaweicloudsdkcore.signer.signer")
from huaweicloudsdkcore.auth.credentials import BasicCredentials  # noqa: E402
from huaweicloudsdkcore.sdk_request import SdkRequest  # noqa: E402

VECTOR_SIGNATURE = "65040287707b34be770fc7a46d16c7fa9f5a283c4d38de65eb7615899b8530ba"


def sdk_sign(
    *,
    method: str,
    scheme: str,
    host: str,
    resource_path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    creds: AkSkCredentials,
    project_id: str,
    sdk_date: str,
) -> SdkRequest:
    """Sign as the SDK's client does: BasicCredentials add X-Project-Id and X-Security-Token."""
    request = SdkRequest(
        method=method,
        schema=scheme,
        host=host,
        resource_path=resource_path,
        query_params=list(query),
        header_params={**headers, "X-Sdk-Date": sdk_date},
        body=body or None,
    )
    sdk_creds = BasicCredentials(creds.access_key, creds.secret_key.get_secret_value(), project_id)
    if creds.security_token is not None:
        sdk_creds.with_security_token(creds.security_token.get_secret_value())
    sdk_creds.sign_request(request)
    return request


# --- The reference's test vector ------------------------------------------------------------


def test_reference_vector() -> None:
    request = httpx.Request(
        "DELETE",
        "https://sfs-turbo.cn-north-4.myhuaweicloud.com/v1/pid0/sfs-turbo/s1/hpc-cache/task/t1",
    )
    creds = AkSkCredentials("AKEXAMPLE", SecretStr("SKEXAMPLE"))
    sign(request, creds, "pid0", datetime(2024, 1, 1, tzinfo=UTC))

    assert request.headers["X-Sdk-Date"] == "20240101T000000Z"
    assert request.headers["X-Project-Id"] == "pid0"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Host"] == "sfs-turbo.cn-north-4.myhuaweicloud.com"
    assert request.headers["Authorization"] == (
        "SDK-HMAC-SHA256 Access=AKEXAMPLE, SignedHeaders=content-type;host;x-project-id;x-sdk-date, "
        f"Signature={VECTOR_SIGNATURE}"
    )


def test_pieces_of_the_vector() -> None:
    request = httpx.Request(
        "DELETE",
        "https://sfs-turbo.cn-north-4.myhuaweicloud.com/v1/pid0/sfs-turbo/s1/hpc-cache/task/t1",
    )
    sign(request, AkSkCredentials("AKEXAMPLE", SecretStr("SKEXAMPLE")), "pid0", datetime(2024, 1, 1))
    canonical = signer.canonical_request(request)
    assert canonical == (
        "DELETE\n/v1/pid0/sfs-turbo/s1/hpc-cache/task/t1/\n\n"
        "content-type:application/json\nhost:sfs-turbo.cn-north-4.myhuaweicloud.com\n"
        "x-project-id:pid0\nx-sdk-date:20240101T000000Z\n\n"
        "content-type;host;x-project-id;x-sdk-date\n"
        f"{signer.EMPTY_BODY_SHA256}"
    )
    to_sign = signer.string_to_sign(canonical, "20240101T000000Z")
    assert to_sign == ("SDK-HMAC-SHA256\n20240101T000000Z\n" + hashlib.sha256(canonical.encode()).hexdigest())
    assert signer.signature(to_sign, SecretStr("SKEXAMPLE")) == VECTOR_SIGNATURE
    # No key derivation: the SK itself keys the HMAC.
    assert hmac.new(b"SKEXAMPLE", to_sign.encode(), hashlib.sha256).hexdigest() == VECTOR_SIGNATURE


def test_vector_matches_the_sdk() -> None:
    creds = AkSkCredentials("AKEXAMPLE", SecretStr("SKEXAMPLE"))
    signed = sdk_sign(
        method="DELETE",
        scheme="https",
        host="sfs-turbo.cn-north-4.myhuaweicloud.com",
        resource_path="/v1/pid0/sfs-turbo/s1/hpc-cache/task/t1",
        query=[],
        headers={"Content-Type": "application/json"},
        body=b"",
        creds=creds,
        project_id="pid0",
        sdk_date="20240101T000000Z",
    )
    assert signed.header_params["Authorization"].endswith(f"Signature={VECTOR_SIGNATURE}")


# --- Hypothesis: identical Authorization headers to the SDK's --------------------------------

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=36)
# Query text with the characters that break naive encoders, plus any other non-surrogate text.
special = st.sampled_from(
    [" ", "+", "&", "=", "~", "%", "%20", "é", "日本", "/", "?", "#", "*", "'", "!", "_", ".", "-"]
)
query_text = st.lists(
    st.one_of(special, st.text(st.characters(blacklist_categories=["Cs"]), max_size=4)), max_size=5
).map("".join)
query_keys = st.one_of(st.sampled_from(["offset", "limit", "type", "status", "a", "A", "a b", "k+", "~k"]), query_text)
query_pairs = st.lists(st.tuples(query_keys, query_text), max_size=6).flatmap(
    # Repeated keys: draw some pairs again with another value.
    lambda pairs: (
        st.lists(st.sampled_from(pairs), max_size=3).map(lambda extra: pairs + [(k, v + "2") for k, v in extra])
        if pairs
        else st.just(pairs)
    )
)
header_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).filter(
    lambda v: v.strip() == v or v.strip() != ""
)
extra_headers = st.dictionaries(
    st.sampled_from(["X-Extra-One", "X-Extra-Two", "X_Underscored", "User-Agent", "Accept", "X-Request-Tag"]),
    header_value,
    max_size=4,
)
content_types = st.sampled_from(
    ["application/json", "application/json;charset=UTF-8", "text/plain", "application/octet-stream"]
)
secrets_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
credentials = st.builds(
    AkSkCredentials,
    access_key=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=20),
    secret_key=secrets_text.map(SecretStr),
    security_token=st.none() | secrets_text.map(SecretStr),
)
dates = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31))
hosts = st.sampled_from(
    [
        ("https", "sfs-turbo.cn-north-4.myhuaweicloud.com"),
        ("https", "sfs-turbo.eu-west-101.myhuaweicloud.eu"),
        ("http", "127.0.0.1:8080"),
    ]
)


@st.composite
def api_requests(draw: Any) -> dict[str, Any]:
    method = draw(st.sampled_from(["GET", "DELETE", "POST"]))
    project, share, task = draw(ids), draw(ids), draw(ids)
    path = draw(
        st.sampled_from(
            [
                f"/v1/{project}/sfs-turbo/{share}/hpc-cache/tasks",
                f"/v1/{project}/sfs-turbo/{share}/hpc-cache/task/{task}",
                f"/v1/{project}/sfs-turbo/{share}/hpc-cache/task",
                f"/v1/{project}/sfs-turbo/{share}/hpc-cache/task/{task}/",
            ]
        )
    )
    body = b""
    if method == "POST" or draw(st.booleans()):
        body = draw(st.one_of(st.binary(max_size=64), st.just(b'{"type": "import", "src_target": "x"}')))
    headers = draw(extra_headers)
    headers["Content-Type"] = draw(content_types)
    return {
        "method": method,
        "endpoint": draw(hosts),
        "path": path,
        "query": draw(query_pairs),
        "headers": headers,
        "body": body,
        "creds": draw(credentials),
        "project_id": project,
        "now": draw(dates),
    }


def _check_against_sdk(case: dict[str, Any]) -> None:
    scheme, host = case["endpoint"]
    request = httpx.Request(
        case["method"],
        f"{scheme}://{host}{case['path']}",
        params=case["query"],
        headers=case["headers"],
        content=case["body"],
    )
    sign(request, case["creds"], case["project_id"], case["now"])

    expected = sdk_sign(
        method=case["method"],
        scheme=scheme,
        host=host,
        resource_path=case["path"],
        query=case["query"],
        headers=case["headers"],
        body=case["body"],
        creds=case["creds"],
        project_id=case["project_id"],
        sdk_date=signer.format_sdk_date(case["now"]),
    )
    assert request.headers["Authorization"] == expected.header_params["Authorization"]
    # What goes on the wire is what the SDK sends: the canonical query, the path untouched.
    assert request.url.raw_path.decode("ascii") == expected.uri
    if case["creds"].security_token is not None:
        assert request.headers["X-Security-Token"] == case["creds"].security_token.get_secret_value()
        assert "x-security-token" in request.headers["Authorization"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(api_requests())
def test_same_authorization_as_the_sdk(case: dict[str, Any]) -> None:
    _check_against_sdk(case)


@settings(max_examples=100, deadline=None)
@given(
    # "." and ".." are dot segments: a URL normalises them away before any signer sees the path
    # (RFC 3986 5.2.4), and the ID checks refuse them long before that.
    segment=st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="/"), min_size=1, max_size=12
    ).filter(lambda s: s not in {".", ".."}),
    creds=credentials,
    now=dates,
)
def test_encoded_path_segments_as_the_sdk(segment: str, creds: AkSkCredentials, now: datetime) -> None:
    # The SDK encodes each path parameter completely (quote with safe=""); the service never
    # sends such IDs, but the signer must still agree on them.
    path = f"/v1/p/sfs-turbo/{quote(segment, safe='')}/hpc-cache/tasks"
    _check_against_sdk(
        {
            "method": "GET",
            "endpoint": ("https", "sfs-turbo.cn-north-4.myhuaweicloud.com"),
            "path": path,
            "query": [],
            "headers": {"Content-Type": "application/json"},
            "body": b"",
            "creds": creds,
            "project_id": "p",
            "now": now,
        }
    )


# --- Behaviour around the algorithm ---------------------------------------------------------


def test_transport_headers_are_not_signed_but_the_rest_is() -> None:
    creds = AkSkCredentials("AK1", SecretStr("SK1"))
    with httpx.Client() as client:
        request = client.build_request(
            "POST", "https://sfs-turbo.cn-north-4.myhuaweicloud.com/v1/p/x", content=b'{"a": 1}'
        )
    sign(request, creds, "p", datetime(2024, 5, 6, 7, 8, 9))
    names = signer.signed_headers(request)
    assert names == ["accept", "content-type", "host", "user-agent", "x-project-id", "x-sdk-date"]
    for unsigned in ("connection", "accept-encoding", "content-length", "authorization"):
        assert unsigned in request.headers or unsigned == "authorization"
        assert unsigned not in names

    expected = sdk_sign(
        method="POST",
        scheme="https",
        host="sfs-turbo.cn-north-4.myhuaweicloud.com",
        resource_path="/v1/p/x",
        query=[],
        headers={
            "Accept": request.headers["Accept"],
            "User-Agent": request.headers["User-Agent"],
            "Content-Type": "application/json",
        },
        body=b'{"a": 1}',
        creds=creds,
        project_id="p",
        sdk_date="20240506T070809Z",
    )
    assert request.headers["Authorization"] == expected.header_params["Authorization"]


def test_signing_again_is_idempotent_and_replaces_the_old_signature() -> None:
    creds = AkSkCredentials("AK1", SecretStr("SK1"), SecretStr("STS-TOKEN"))
    request = httpx.Request("GET", "https://h.example/v1/p/tasks?b=2&a=x+y&a=%2B")
    when = datetime(2024, 1, 1, 12, 0, 0)
    sign(request, creds, "p", when)
    first = request.headers["Authorization"]
    url = request.url
    sign(request, creds, "p", when)
    assert request.headers["Authorization"] == first
    assert request.url == url
    assert request.headers.get_list("Authorization") == [first]
    # A raw '+' in a query string means a space (form encoding, as httpx reads it); the wire
    # then carries the unambiguous canonical form.
    assert request.url.query == b"a=%2B&a=x%20y&b=2"
    sign(request, creds, "p", datetime(2024, 1, 1, 12, 0, 1))
    assert request.headers["Authorization"] != first
    assert request.headers["X-Sdk-Date"] == "20240101T120001Z"


def test_aware_dates_are_converted_to_utc() -> None:
    from datetime import timedelta, timezone

    plus2 = timezone(timedelta(hours=2))
    assert signer.format_sdk_date(datetime(2024, 1, 1, 2, 0, 0, tzinfo=plus2)) == "20240101T000000Z"
    assert signer.format_sdk_date(datetime(2024, 1, 1, 2, 0, 0)) == "20240101T020000Z"


def test_canonical_pieces() -> None:
    assert signer.canonical_uri("/v1/a b/%7E/") == "/v1/a%20b/~/"
    assert signer.canonical_uri("/v1/x") == "/v1/x/"
    assert signer.canonical_query([("b", "1"), ("a", "x y"), ("a", "+&=")]) == "a=%2B%26%3D&a=x%20y&b=1"
    assert signer.canonical_query([]) == ""


def test_secrets_not_in_repr() -> None:
    creds = AkSkCredentials("AKVISIBLE", SecretStr("SK-very-secret"), SecretStr("STS-very-secret"))
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "AKVISIBLE" in text
        assert "SK-very-secret" not in text
        assert "STS-very-secret" not in text
