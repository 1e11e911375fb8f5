"""Choosing the authentication mode: :func:`build_auth` turns the settings into an ``httpx.Auth``."""

from __future__ import annotations

import httpx
import redis

from worker.api.auth.agency import AssumeRoleSource
from worker.api.auth.aksk import AkSkAuth
from worker.api.auth.base import NO_CREDENTIALS, AuthError
from worker.api.auth.iam import IamAuth, IamTokenProvider
from worker.api.auth.iam_login import IamLogin
from worker.api.auth.metadata import PlatformAuth, PlatformCredentialProvider
from worker.api.auth.token import TokenAuth
from worker.api.signer import AkSkCredentials
from worker.settings import ENV_PREFIX, Settings


def build_auth(
    settings: Settings, redis_client: redis.Redis | None = None, *, http: httpx.Client | None = None
) -> httpx.Auth:
    """The :class:`httpx.Auth` for ``settings.auth_mode``; raise :class:`AuthError` when none fits.

    ``redis_client`` shares the IAM token (and, with ``SFS_CLEANUP_METADATA_CACHE_KEY``, the
    platform credentials) among processes (without it, each process logs in or fetches on its
    own); ``http`` is the client used for the IAM login or the metadata service (default: a new
    one with the settings' timeouts).
    """
    mode = settings.auth_mode
    if mode == "token":
        assert settings.auth_token is not None
        return TokenAuth(settings.auth_token)
    if mode == "aksk":
        assert settings.access_key is not None and settings.secret_key is not None
        creds = AkSkCredentials(settings.access_key, settings.secret_key, settings.security_token)
        return AkSkAuth(creds, _require_project(settings, "AK/SK signing sends it as X-Project-Id"))
    if mode == "iam":
        if settings.iam_endpoint is None or settings.iam_password is None or settings.iam_domain is None:
            raise AuthError(
                "IAM login needs all of SFS_CLEANUP_IAM_ENDPOINT, SFS_CLEANUP_IAM_USER, "
                "SFS_CLEANUP_IAM_PASSWORD and SFS_CLEANUP_IAM_DOMAIN"
            )
        assert settings.iam_user is not None
        login = IamLogin(
            endpoint=settings.iam_endpoint,
            user=settings.iam_user,
            password=settings.iam_password,
            domain=settings.iam_domain,
            project_id=_require_project(settings, "the IAM token is scoped to the project"),
        )
        login_budget = settings.http_connect_timeout_s + settings.http_read_timeout_s
        if http is None:
            http = httpx.Client(
                timeout=httpx.Timeout(settings.http_read_timeout_s, connect=settings.http_connect_timeout_s)
            )
        provider = IamTokenProvider(
            login,
            http=http,
            redis_client=redis_client,
            key_prefix=settings.key_prefix,
            renew_before_s=settings.iam_token_renew_before_s,
            lock_ttl_s=login_budget + 5.0,
        )
        return IamAuth(provider)
    if mode == "metadata":
        return _platform_auth(settings, redis_client, http)
    raise AuthError(NO_CREDENTIALS)


def _require_project(settings: Settings, why: str) -> str:
    if settings.project_id is None:
        raise AuthError(f"{ENV_PREFIX}PROJECT_ID is required: {why}")
    return settings.project_id


def _platform_auth(settings: Settings, redis_client: redis.Redis | None, http: httpx.Client | None) -> PlatformAuth:
    """The instance's agency from the metadata service, and through it, if set, another account's."""
    project_id = _require_project(settings, "AK/SK signing sends it as X-Project-Id")
    client = http or httpx.Client(
        timeout=httpx.Timeout(settings.http_read_timeout_s, connect=settings.http_connect_timeout_s)
    )

    def provider(source: str | AssumeRoleSource) -> PlatformCredentialProvider:
        return PlatformCredentialProvider(
            source,
            http=client,
            redis_client=redis_client,
            cache_key=settings.metadata_cache_key,
            key_prefix=settings.key_prefix,
            renew_before_s=settings.metadata_renew_before_s,
            wait_s=settings.http_connect_timeout_s + settings.http_read_timeout_s,
        )

    platform = provider(settings.metadata_url)
    if settings.agency_name is not None:
        assert settings.agency_domain is not None and settings.agency_iam_endpoint is not None
        platform = provider(
            AssumeRoleSource(
                iam_endpoint=settings.agency_iam_endpoint,
                domain_name=settings.agency_domain,
                agency_name=settings.agency_name,
                duration_s=settings.agency_duration_s,
                caller=platform.credentials,
            )
        )
    return PlatformAuth(platform, project_id)
