"""The gateway's side of ``SDK-HMAC-SHA256`` (AK/SK signing), written from the published algorithm.

It is deliberately independent of the service's own signer: if both were wrong the same way,
a shared implementation would let the tests pass against a fake that no real gateway matches.
The reference's test vector and the official SDK (in the tests) keep it honest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

ALGORITHM: Final = "SDK-HMAC-SHA256"
DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256: Final = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"

_AUTH_HEADER = re.compile(
    rf"{ALGORITHM}\s+Access=(?P<ak>[^,\s]+),\s*SignedHeaders=(?P<headers>[^,\s]+),\s*Signature=(?P<sig>[0-9a-fA-F]+)\s*"
)
_PREFIX: Final = "Incorrect IAM authentication information: "
# Paths made only of unreserved characters canonicalise to themselves: the common case, and the
# encode/decode round trip per segment would otherwise be a third of a verification's cost.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_.~/-]*")
_SDK_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")


class SignatureError(Exception):
    """Why the gateway refuses a signed request: the APIGW code, HTTP status and message."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str


def _encode(text: str) -> str:
    # RFC 3986: only unreserved characters stay as they are (quote keeps A-Z a-z 0-9 _ . - and ~).
    return quote(text, safe="~")


def canonical_uri(raw_path: str) -> str:
    """Each path segment decoded then re-encoded, with a trailing ``/`` (for signing only)."""
    if _PLAIN_PATH.fullmatch(raw_path):
        uri = raw_path
    else:
        uri = "/".join(_encode(unquote(segment)) for segment in raw_path.split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Pairs sorted by name then value, both encoded; ``k=`` for an empty value."""
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(pairs))


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    # `+` reads as a space, as form encoding (and httpx) write it: the signer saw a space.
    return parse_qsl(raw_query, keep_blank_values=True)


def payload_hash(body: bytes, content_sha256: str | None = None) -> str:
    if not body:
        return EMPTY_SHA256
    if content_sha256 == UNSIGNED_PAYLOAD:
        return UNSIGNED_PAYLOAD
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    *,
    headers: Mapping[str, str],
    signed_headers: Iterable[str],
    body_hash: str,
) -> str:
    """``headers`` must look names up case-insensitively (aiohttp's and httpx's headers do)."""
    names = sorted(name.lower() for name in signed_headers)
    lines = []
    for name in names:
        value = headers.get(name)
        if value is None:
            raise SignatureError("APIGW.0301", _PREFIX + "verify aksk signature fail")
        lines.append(f"{name}:{value.strip()}\n")
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(query_pairs(raw_query)),
            "".join(lines),
            ";".join(names),
            body_hash,
        ]
    )


def string_to_sign(sdk_date: str, request_text: str) -> str:
    digest = hashlib.sha256(request_text.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def signature(secret_key: str, text_to_sign: str) -> str:
    """HMAC-SHA256 keyed with the SK itself: this algorithm derives no per-date key."""
    return hmac.new(secret_key.encode("utf-8"), text_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def parse_authorization(value: str) -> ParsedAuthorization | None:
    match = _AUTH_HEADER.fullmatch(value.strip())
    if match is None:
        return None
    names = tuple(name for name in match["headers"].lower().split(";") if name)
    return ParsedAuthorization(match["ak"], names, match["sig"].lower())


def parse_sdk_date(value: str | None) -> datetime | None:
    """``YYYYMMDDTHHMMSSZ`` (UTC); None when absent or not that form. (strptime is 20x slower.)"""
    match = _SDK_DATE.fullmatch(value or "")
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


def verify(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], str | None],
    security_token_for: Callable[[str], str | None] = lambda _ak: None,
    now: datetime,
    max_skew_s: float = 900.0,
) -> str:
    """Return the access key of a correctly signed request, else raise :class:`SignatureError`.

    Checks in the gateway's order as far as it is known: the header's form, the AK, the date,
    a temporary credential's security token, then the signature itself.
    """
    parsed = parse_authorization(headers.get("authorization", ""))
    if parsed is None:
        raise SignatureError("APIGW.0301", _PREFIX + "verify aksk signature fail")
    secret = secret_for(parsed.access_key)
    if secret is None:
        raise SignatureError("APIGW.0301", _PREFIX + "Get secretKey failed, ak not exist")
    sdk_date = headers.get("x-sdk-date")
    signed_at = parse_sdk_date(sdk_date)
    if sdk_date is None or signed_at is None or "x-sdk-date" not in parsed.signed_headers:
        raise SignatureError("APIGW.0303", "Incorrect app authentication information: X-Sdk-Date is invalid")
    if abs((now - signed_at).total_seconds()) > max_skew_s:
        raise SignatureError(
            "APIGW.0303",
            "Incorrect app authentication information: X-Sdk-Date differs from the server time by more "
            f"than {max_skew_s:g} seconds",
        )
    needed_token = security_token_for(parsed.access_key)
    if needed_token is not None and (
        "x-security-token" not in parsed.signed_headers
        or not hmac.compare_digest(headers.get("x-security-token", ""), needed_token)
    ):
        raise SignatureError("APIGW.0301", _PREFIX + "verify aksk signature fail")
    request_text = canonical_request(
        method,
        raw_path,
        raw_query,
        headers=headers,
        signed_headers=parsed.signed_headers,
        body_hash=payload_hash(body, headers.get("x-sdk-content-sha256")),
    )
    expected = signature(secret, string_to_sign(sdk_date, request_text))
    if not hmac.compare_digest(expected, parsed.signature):
        raise SignatureError("APIGW.0301", _PREFIX + "verify aksk signature fail")
    return parsed.access_key


def sign_headers(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """``headers`` plus ``Host``, ``X-Sdk-Date`` and ``Authorization``, every given header signed.

    For tests that need a signed request without the official SDK; the verifier above is proven
    against the reference's vector and the SDK, not against this.
    """
    parts = urlsplit(url)
    out = dict(headers)
    lowered = {name.lower(): name for name in out}
    if "host" not in lowered:
        out["Host"] = parts.netloc
    if "x-sdk-date" not in lowered:
        out["X-Sdk-Date"] = (now or datetime.now(UTC)).strftime(DATE_FORMAT)
    view = {name.lower(): value for name, value in out.items()}
    names = sorted(view)
    request_text = canonical_request(
        method,
        parts.path or "/",
        parts.query,
        headers=view,
        signed_headers=names,
        body_hash=payload_hash(body, view.get("x-sdk-content-sha256")),
    )
    sig = signature(secret_key, string_to_sign(view["x-sdk-date"], request_text))
    out["Authorization"] = f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(names)}, Signature={sig}"
    return out
