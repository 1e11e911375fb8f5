"""An agency of another account, assumed with the platform credentials (:class:`AssumeRoleSource`).

IAM's ``POST /v3.0/OS-CREDENTIAL/securitytokens`` with ``"methods": ["assume_role"]`` turns
the caller's identity (here: the instance's own temporary credentials, which sign the request,
security token included) into a temporary AK/SK and security token of ``agency_name`` in the
account ``domain_name``, valid ``duration_seconds`` (15 minutes to 24 hours). The answer (201)
has the same ``credential`` object as the metadata service's, so it is read the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import httpx

from worker.api.auth.base import AuthError, AuthUnavailableError
from worker.api.auth.metadata_fetch import TemporaryCredentials, read_credential
from worker.api.signer import (
    HEADER_DATE,
    HEADER_PROJECT,
    authorization,
    canonical_request,
    sign,
    signature,
    signed_headers,
    string_to_sign,
)

ASSUME_ROLE_PATH: Final = "/v3.0/OS-CREDENTIAL/securitytokens"
_FIX: Final = "check SFS_CLEANUP_AGENCY_DOMAIN and SFS_CLEANUP_AGENCY_NAME, and that the agency trusts this account"


@dataclass(frozen=True)
class AssumeRoleSource:
    """Temporary credentials of an agency in another account, from IAM, by the caller's own."""

    iam_endpoint: str
    domain_name: str
    agency_name: str
    duration_s: int
    caller: Callable[[], TemporaryCredentials] = field(repr=False)  # the platform credentials

    @property
    def identity(self) -> str:
        return f"agency {self.domain_name}/{self.agency_name} via {self.iam_endpoint}"

    def body(self) -> dict[str, object]:
        assume = {"domain_name": self.domain_name, "agency_name": self.agency_name, "duration_seconds": self.duration_s}
        return {"auth": {"identity": {"methods": ["assume_role"], "assume_role": assume}}}

    def fetch(self, http: httpx.Client, clock: Callable[[], float]) -> TemporaryCredentials:
        started = clock()
        caller = self.caller()
        request = http.build_request(
            "POST",
            self.iam_endpoint + ASSUME_ROLE_PATH,
            content=json.dumps(self.body()).encode("utf-8"),
            headers={"Content-Type": "application/json;charset=utf8"},
        )
        _sign_unscoped(request, caller)
        try:
            response = http.send(request)
        except httpx.HTTPError as exc:
            raise AuthUnavailableError(
                f"no answer from IAM at {self.iam_endpoint} ({type(exc).__name__}) for the agency "
                f"{self.domain_name}/{self.agency_name}: check SFS_CLEANUP_AGENCY_IAM_ENDPOINT"
            ) from None
        status = response.status_code
        if status in (400, 401, 403, 404):
            raise AuthError(f"IAM refused to assume {self.domain_name}/{self.agency_name} (HTTP {status}): {_FIX}")
        if not 200 <= status < 300:
            raise AuthUnavailableError(f"IAM answered HTTP {status} to the agency request; will try again later")
        return read_credential(f"IAM at {self.iam_endpoint}", response, started)


def _sign_unscoped(request: httpx.Request, caller: TemporaryCredentials) -> None:
    """Sign like every API call, less ``X-Project-Id``: IAM's calls are not scoped to a project."""
    sign(request, caller.signing(), project_id="-")
    del request.headers[HEADER_PROJECT]
    names = signed_headers(request)
    to_sign = string_to_sign(canonical_request(request), request.headers[HEADER_DATE])
    request.headers["Authorization"] = authorization(caller.access_key, names, signature(to_sign, caller.secret_key))
