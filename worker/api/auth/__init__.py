"""Authentication of API calls, in four modes, behind one seam: an :class:`httpx.Auth`.

:func:`build_auth` (:mod:`.provider`) picks the mode from the settings:

* ``token`` (:mod:`.token`): a ready IAM token goes out as ``X-Auth-Token``. It cannot be
  renewed, so a 401 passes through unchanged and the caller reports it.
* ``aksk`` (:mod:`.aksk`): every request is signed with ``SDK-HMAC-SHA256``
  (:mod:`worker.api.signer`).
* ``iam`` (:mod:`.iam`): a password login to IAM (:mod:`.iam_login`) gives a project-scoped
  token (:class:`IamTokenProvider`), shared by the fleet through Redis (:mod:`.cache`).
* ``metadata`` (:mod:`.metadata`): the temporary AK/SK and security token of the instance's
  agency, from the ECS/CCE metadata service (:mod:`.metadata_fetch`), renewed before they
  expire and shared by the fleet through Redis, sealed (:mod:`.sealed`).

No secret (token, password, SK, security token, derived key) is put in any repr, exception
or log line.
"""

from worker.api.auth.aksk import AkSkAuth
from worker.api.auth.base import NO_CREDENTIALS, AuthError, AuthUnavailableError
from worker.api.auth.iam import IamAuth, IamTokenProvider
from worker.api.auth.iam_login import CachedToken, IamLogin
from worker.api.auth.metadata import PlatformAuth, PlatformCredentialProvider
from worker.api.auth.metadata_fetch import TemporaryCredentials
from worker.api.auth.provider import build_auth
from worker.api.auth.token import TokenAuth

__all__ = [
    "NO_CREDENTIALS",
    "AkSkAuth",
    "AuthError",
    "AuthUnavailableError",
    "CachedToken",
    "IamAuth",
    "IamLogin",
    "IamTokenProvider",
    "PlatformAuth",
    "PlatformCredentialProvider",
    "TemporaryCredentials",
    "TokenAuth",
    "build_auth",
]
