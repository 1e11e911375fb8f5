"""Temporary: re-exports worker.api.auth; removed at the end of the restructuring."""

from worker.api.auth import (
    NO_CREDENTIALS,
    AkSkAuth,
    AuthError,
    AuthUnavailableError,
    CachedToken,
    IamAuth,
    IamLogin,
    IamTokenProvider,
    TokenAuth,
    build_auth,
)

__all__ = [
    "NO_CREDENTIALS",
    "AkSkAuth",
    "AuthError",
    "AuthUnavailableError",
    "CachedToken",
    "IamAuth",
    "IamLogin",
    "IamTokenProvider",
    "TokenAuth",
    "build_auth",
]
