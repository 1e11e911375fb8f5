"""AK/SK request signing, ``SDK-HMAC-SHA256``, byte for byte as Huawei's official SDK signs.

The official Python SDK (``huaweicloudsdkcore.signer.signer.Signer``) is the oracle: the unit
tests sign the same requests with it and with this module and require identical
``Authorization`` headers. Where the reference notes and the SDK differ in a detail, this module
follows the SDK:

* query pairs are sorted on their *decoded* key and value (Python string order), and encoded
  afterwards with ``quote(s, safe="~")`` (RFC 3986 unreserved characters stay, a space is
  ``%20``, ``+`` is ``%2B``);
* the path is percent-*decoded* first and every segment re-encoded the same way (so ``%2F``
  inside a segment is signed as a separator, as the SDK does);
* header values are signed stripped of surrounding whitespace, names lower-cased, and a
  header whose name contains ``_`` is not signed;
* a non-empty body whose ``Content-Type`` is neither JSON nor BSON is signed as
  ``UNSIGNED-PAYLOAD`` through a signed ``X-Sdk-Content-Sha256`` header.

Like the SDK, :func:`sign` also puts the canonical query on the wire. The signature is then
computed over exactly what is sent, so a ``+`` or a space in a value can never be decoded one
way by the gateway and another way by us.

Which headers are signed is our choice (the gateway checks whatever ``SignedHeaders`` names):
every header on the request, except those that proxies or the HTTP stack may rewrite on the
way (``Connection``, ``Accept-Encoding``, ``Content-Length``, ...).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, unquote

import httpx
from pydantic import SecretStr

ALGORITHM: Final = "SDK-HMAC-SHA256"
DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256: Final = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"

HEADER_DATE: Final = "X-Sdk-Date"
HEADER_PROJECT: Final = "X-Project-Id"
HEADER_SECURITY_TOKEN: Final = "X-Security-Token"  # noqa: S105 - a header name
HEADER_CONTENT_SHA256: Final = "X-Sdk-Content-Sha256"

#: Headers never signed: hop-by-hop and transport headers that a proxy or the HTTP stack may
#: add, drop or rewrite after signing, which would break the signature at the gateway.
UNSIGNED_HEADERS: Final = frozenset(
    {
        "authorization",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
    }
)


@dataclass(frozen=True)
class AkSkCredentials:
    """An access key, its secret key and, for temporary credentials, a security token."""

    access_key: str
    secret_key: SecretStr = field(repr=False)
    security_token: SecretStr | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        temporary = ", temporary" if self.security_token is not None else ""
        return f"AkSkCredentials(access_key={self.access_key!r}, secret_key=***{temporary})"


# The current second's X-Sdk-Date, as (epoch second, text): every request of a second shares it
# (formatting it cost about 20 us per DELETE in the throughput profile). One tuple, swapped whole.
_now_date: tuple[int, str] = (-1, "")


def _sdk_date_now() -> str:
    global _now_date  # noqa: PLW0603 - a per-process cache of one value
    second = int(time.time())
    cached = _now_date
    if cached[0] != second:
        cached = (second, time.strftime(DATE_FORMAT, time.gmtime(second)))
        _now_date = cached
    return cached[1]


def format_sdk_date(now: datetime | None = None) -> str:
    """``X-Sdk-Date``: ``YYYYMMDDTHHMMSSZ`` in UTC (a naive datetime is taken as UTC)."""
    if now is None:
        return _sdk_date_now()
    moment = now
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime(DATE_FORMAT)


def _encode(text: str) -> str:
    return quote(text, safe="~")


# A path of only characters that ``_encode`` keeps and no ``%`` is its own canonical form: the
# API's paths (hex and UUID IDs) always are, and skipping the decode and re-encode of each
# segment is most of the URI's cost.
_PLAIN_PATH: Final = re.compile(r"[A-Za-z0-9_.~/-]*")


def canonical_uri(raw_path: str) -> str:
    """Each path segment decoded, then RFC 3986 encoded; a trailing ``/`` always (SDK rule)."""
    if _PLAIN_PATH.fullmatch(raw_path):
        path = raw_path
    else:
        path = "/".join(_encode(segment) for segment in unquote(raw_path).split("/"))
    return path if path.endswith("/") else path + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Pairs sorted on decoded key then value, each side RFC 3986 encoded, joined with ``&``."""
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in sorted(pairs))


def _path_of(request: httpx.Request) -> str:
    return request.url.raw_path.split(b"?", 1)[0].decode("ascii")


def _signed_values(request: httpx.Request) -> dict[str, list[str]]:
    """The values of each signed header (lower-cased name), in the order sent; names unsorted."""
    values: dict[str, list[str]] = {}
    for name, value in request.headers.multi_items():
        lower = name.lower()
        if "_" not in lower and lower not in UNSIGNED_HEADERS:
            values.setdefault(lower, []).append(value)
    return values


def signed_headers(request: httpx.Request) -> list[str]:
    """The lower-cased names of the headers that are signed, sorted."""
    return sorted(_signed_values(request))


def _body_hash(request: httpx.Request) -> str:
    body = request.read()
    if not body:
        return EMPTY_BODY_SHA256
    declared: str | None = request.headers.get(HEADER_CONTENT_SHA256)
    if declared:
        return declared
    return hashlib.sha256(body).hexdigest()


def _canonical(request: httpx.Request, query: str) -> tuple[str, list[str]]:
    """The canonical request and the signed header names, from one pass over the headers."""
    return _canonical_of(request.method, _path_of(request), query, _signed_values(request), _body_hash(request))


def _canonical_of(
    method: str, path: str, query: str, values: dict[str, list[str]], body_hash: str
) -> tuple[str, list[str]]:
    names = sorted(values)
    headers = "".join(f"{name}:{', '.join(values[name]).strip()}\n" for name in names)
    lines = [method.upper(), canonical_uri(path), query, headers, ";".join(names), body_hash]
    return "\n".join(lines), names


def canonical_request(request: httpx.Request) -> str:
    """Method, URI, query, headers, signed header names and body hash, one per line."""
    return _canonical(request, canonical_query(request.url.params.multi_items()))[0]


def string_to_sign(canonical: str, sdk_date: str) -> str:
    """Algorithm, ``X-Sdk-Date`` value and the hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def signature(to_sign: str, secret_key: SecretStr) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed with the SK itself (no key derivation)."""
    key = secret_key.get_secret_value().encode("utf-8")
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization(access_key: str, names: list[str], sig: str) -> str:
    return f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(names)}, Signature={sig}"


def _sdk_headers(
    headers: MutableMapping[str, str], creds: AkSkCredentials, project_id: str, now: datetime | None
) -> str:
    """The headers the SDK adds before signing (both request forms); returns their date."""
    headers.pop("Authorization", None)
    sdk_date = format_sdk_date(now)
    headers[HEADER_DATE] = sdk_date
    headers[HEADER_PROJECT] = project_id
    if creds.security_token is not None:
        headers[HEADER_SECURITY_TOKEN] = creds.security_token.get_secret_value()
    content_type = headers.setdefault("Content-Type", "application/json")
    if not content_type.startswith(("application/json", "application/bson")):
        # The SDK's rule: payloads it cannot canonicalise are declared rather than hashed.
        headers[HEADER_CONTENT_SHA256] = UNSIGNED_PAYLOAD
    return sdk_date


def sign(request: httpx.Request, creds: AkSkCredentials, project_id: str, now: datetime | None = None) -> None:
    """Sign ``request`` in place; call it again to re-sign (a retry needs a fresh date)."""
    headers = request.headers
    if "Host" not in headers:
        headers["Host"] = request.url.netloc.decode("ascii")
    sdk_date = _sdk_headers(headers, creds, project_id, now)

    wire_query = request.url.query
    # No query (a DELETE or a show): nothing to parse, sort or put back on the wire.
    query = canonical_query(request.url.params.multi_items()) if wire_query else ""
    # Re-building the URL parses it again (about 40 us): skip it when the query on the wire is
    # already the canonical one.
    if wire_query != query.encode("ascii"):
        request.url = request.url.copy_with(query=query.encode("ascii") if query else None)

    canonical, names = _canonical(request, query)
    to_sign = string_to_sign(canonical, sdk_date)
    headers["Authorization"] = authorization(creds.access_key, names, signature(to_sign, creds.secret_key))


def sign_headers(
    method: str,
    path: str,
    headers: dict[str, str],
    creds: AkSkCredentials,
    project_id: str,
    now: datetime | None = None,
) -> None:
    """:func:`sign` for a request with no query and no body whose headers are a plain dict with
    one spelling per name, ``Host`` among them (the hand-written wire's, :mod:`worker.api.wire`):
    the same headers are added and the same ``Authorization`` computed, without httpx's models."""
    sdk_date = _sdk_headers(headers, creds, project_id, now)
    values: dict[str, list[str]] = {}
    for name, value in headers.items():
        lower = name.lower()
        if "_" not in lower and lower not in UNSIGNED_HEADERS:
            values.setdefault(lower, []).append(value)
    canonical, names = _canonical_of(method, path, "", values, EMPTY_BODY_SHA256)
    to_sign = string_to_sign(canonical, sdk_date)
    headers["Authorization"] = authorization(creds.access_key, names, signature(to_sign, creds.secret_key))
