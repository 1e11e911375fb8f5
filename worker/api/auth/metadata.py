"""The ``metadata`` mode: requests signed with the temporary AK/SK and security token of the
instance's agency (:mod:`.metadata_fetch`), renewed before they expire, shared by the fleet.

:class:`PlatformCredentialProvider` gets them from memory, else from the fleet's shared copy in
Redis (sealed, :mod:`.sealed`, only when ``SFS_CLEANUP_METADATA_CACHE_KEY`` is set), else from the
metadata service, asked by one process of the fleet while the others wait (bounded) and keep
using credentials that are still valid. Credentials are renewed when less than
``min(renew_before_s, lifetime / 3)`` of them remains.

:class:`PlatformAuth` signs every request with them (``X-Security-Token`` included, and signed).
A 401 ``APIGW.0301``/``APIGW.0307`` (the key expired or was revoked early) fetches new ones once
and re-signs once, unless the refused key was itself fetched moments ago: then new ones would
be refused too, and the 401 passes through to the caller.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Final, Protocol

import httpx
import redis
import structlog
from pydantic import SecretStr

from worker.api.auth.base import AuthError, AuthUnavailableError, renewable
from worker.api.auth.metadata_fetch import TemporaryCredentials, fetch_credentials
from worker.api.auth.sealed import SealedStore
from worker.api.signer import sign, sign_headers
from worker.api.wire import WireAnswer, WireRequest

log = structlog.get_logger(__name__)

_SALT: Final = b"sfs-turbo-cleanup/platform-credentials/v1"
#: A refused key younger than this is not replaced: new ones would be refused too.
REJECTION_COOLDOWN_S: Final = 30.0
#: How long a refused fetch (no agency, a wrong URL) and an unanswered one are remembered.
REFUSAL_MEMORY_S: Final = 30.0
UNAVAILABLE_MEMORY_S: Final = 2.0


class CredentialSource(Protocol):
    """Where temporary credentials come from; ``identity`` names it (logs, the shared key)."""

    @property
    def identity(self) -> str: ...

    def fetch(self, http: httpx.Client, clock: Callable[[], float]) -> TemporaryCredentials: ...


@dataclass(frozen=True)
class MetadataSource:
    """The instance's own agency, from the metadata service's securitykey address."""

    url: str

    @property
    def identity(self) -> str:
        return f"metadata {self.url}"

    def fetch(self, http: httpx.Client, clock: Callable[[], float]) -> TemporaryCredentials:
        return fetch_credentials(self.url, http, clock)


class PlatformCredentialProvider:
    """Gets, shares and renews the instance's temporary credentials. Thread-safe.

    ``clock`` is wall-clock epoch seconds (expiry is wall-clock time); ``sleep`` is used between
    polls of the shared copy. Both are injectable for tests.
    """

    def __init__(
        self,
        source: str | CredentialSource,
        *,
        http: httpx.Client,
        redis_client: redis.Redis | None = None,
        cache_key: SecretStr | None = None,
        key_prefix: str = "sfs",
        renew_before_s: float = 900.0,
        wait_s: float = 10.0,
        poll_s: float = 0.05,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = MetadataSource(source) if isinstance(source, str) else source
        self._http = http
        self._renew_before_s = renew_before_s
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        self._store: SealedStore | None = None
        if cache_key is not None and redis_client is not None:
            self._store = SealedStore(
                redis_client,
                key=f"{key_prefix}:auth:platform:{hashlib.sha256(self.source.identity.encode()).hexdigest()[:16]}",
                secret=cache_key,
                salt=_SALT,
                info=self.source.identity.encode("utf-8"),
                lock_ttl_ms=int((wait_s + 5.0) * 1000),
            )
        self._state_lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._current: TemporaryCredentials | None = None
        self._failed: tuple[float, AuthError] | None = None  # (until, on the monotonic clock)

    def __repr__(self) -> str:
        shared = "shared" if self._store is not None else "per process"
        return f"PlatformCredentialProvider({self.source.identity!r}, {shared})"

    # --- Public ---------------------------------------------------------------------------

    def credentials(self) -> TemporaryCredentials:
        """Valid credentials: from memory, else the fleet's shared copy, else the metadata service."""
        now = self._clock()
        with self._state_lock:
            current = self._current
        if current is not None and current.fresh(now, self._renew_before_s):
            return current
        if current is not None and current.valid(now):
            # Due for renewal but still good: if another thread is renewing, don't wait for it.
            if not self._fetch_lock.acquire(blocking=False):
                return current
        elif not self._fetch_lock.acquire(timeout=self._wait_s * 2):
            raise AuthUnavailableError(
                f"no platform credentials within {self._wait_s * 2:.0f} s ({self.source.identity})"
            )
        try:
            return self._refresh(rejected=None)
        finally:
            self._fetch_lock.release()

    def renew(self, rejected: str) -> TemporaryCredentials | None:
        """Credentials to replace those of AK ``rejected``, which the API refused; None when
        renewing cannot help (the refused key was fetched moments ago)."""
        if not self._fetch_lock.acquire(timeout=self._wait_s * 2):
            raise AuthUnavailableError(
                f"no platform credentials within {self._wait_s * 2:.0f} s ({self.source.identity})"
            )
        try:
            with self._state_lock:
                current = self._current
            if current is not None and current.access_key != rejected:
                return current  # another thread already replaced them
            if current is not None and self._clock() - current.iat < REJECTION_COOLDOWN_S:
                log.warning("the API refused freshly fetched platform credentials; not fetching again")
                return None
            with self._state_lock:
                self._current = None
            if current is not None and current.blob is not None and self._store is not None:
                self._store.delete_if_equal(current.blob)  # only if nobody stored newer ones
            return self._refresh(rejected=rejected)
        finally:
            self._fetch_lock.release()

    # --- Internals ------------------------------------------------------------------------

    def _timed_out(self) -> AuthUnavailableError:
        return AuthUnavailableError(f"no platform credentials within {self._wait_s * 2:.0f} s ({self.source.identity})")

    def _refresh(self, rejected: str | None) -> TemporaryCredentials:
        """Called with the fetch lock held."""
        with self._state_lock:
            current = self._current
        now = self._clock()
        if current is not None and current.access_key != rejected and current.fresh(now, self._renew_before_s):
            return current
        fallback = current if current is not None and current.valid(now) and current.access_key != rejected else None
        store = self._store
        if store is None:
            return self._adopt(self._fetch(fallback))
        deadline = time.monotonic() + self._wait_s
        owner = base64.urlsafe_b64encode(os.urandom(12)).decode("ascii")
        while True:
            now = self._clock()
            shared = self._usable(self._read(store), rejected, now)
            if shared is not None and shared.fresh(now, self._renew_before_s):
                return self._adopt(shared)
            if store.try_lock(owner):
                try:
                    again = self._usable(self._read(store), rejected, self._clock())  # stored just before?
                    if again is not None and again.fresh(self._clock(), self._renew_before_s):
                        return self._adopt(again)
                    fetched = self._fetch(shared or fallback)
                    if fetched is not (shared or fallback):
                        fetched = self._share(store, fetched)
                    return self._adopt(fetched)
                finally:
                    store.unlock(owner)
            # Another process is fetching: valid credentials keep the work going meanwhile.
            if shared is not None:
                return self._adopt(shared)
            if fallback is not None:
                return fallback
            if time.monotonic() >= deadline:
                # The metadata service is local and cheap: asking it beats failing the task.
                return self._adopt(self._fetch(None))
            self._sleep(self._poll_s)

    def _fetch(self, fallback: TemporaryCredentials | None) -> TemporaryCredentials:
        usable = fallback is not None and fallback.valid(self._clock())
        with self._state_lock:
            failed = self._failed
        if failed is not None and time.monotonic() < failed[0]:
            # A refusal moments ago: every thread of every job asking again would only hammer it.
            if usable:
                assert fallback is not None
                return fallback
            raise type(failed[1])(str(failed[1]))
        try:
            fetched = self.source.fetch(self._http, self._clock)
        except AuthError as exc:
            ttl = UNAVAILABLE_MEMORY_S if isinstance(exc, AuthUnavailableError) else REFUSAL_MEMORY_S
            with self._state_lock:
                self._failed = (time.monotonic() + ttl, exc)
            if not usable:
                raise
            log.warning("platform credential renewal failed, using the current ones meanwhile", reason=str(exc))
            assert fallback is not None
            return fallback
        log.info("platform credentials fetched", access_key=fetched.access_key, expires_at=fetched.expires_at)
        return fetched

    def _share(self, store: SealedStore, creds: TemporaryCredentials) -> TemporaryCredentials:
        blob = store.seal(
            {
                "ak": creds.access_key,
                "sk": creds.secret_key.get_secret_value(),
                "st": creds.security_token.get_secret_value(),
                "exp": creds.exp,
                "iat": creds.iat,
                "expires_at": creds.expires_at,
            }
        )
        store.store(blob, int((creds.exp - self._clock()) * 1000))
        return replace(creds, blob=blob)

    @staticmethod
    def _read(store: SealedStore) -> TemporaryCredentials | None:
        found = store.read()
        if found is None:
            return None
        value, blob = found
        try:
            return TemporaryCredentials(
                access_key=str(value["ak"]),
                secret_key=SecretStr(str(value["sk"])),
                security_token=SecretStr(str(value["st"])),
                exp=float(value["exp"]),
                iat=float(value["iat"]),
                expires_at=str(value["expires_at"]),
                blob=blob,
            )
        except (KeyError, TypeError, ValueError):
            return None

    @staticmethod
    def _usable(creds: TemporaryCredentials | None, rejected: str | None, now: float) -> TemporaryCredentials | None:
        if creds is None or creds.access_key == rejected or not creds.valid(now):
            return None
        return creds

    def _adopt(self, creds: TemporaryCredentials) -> TemporaryCredentials:
        with self._state_lock:
            self._current = creds
        return creds


def _renewable(response: httpx.Response) -> bool:
    return renewable(response.status_code, response.content)


class PlatformAuth(httpx.Auth):
    """Signs every request with the platform credentials; one renewal and re-sign on a 401."""

    requires_request_body = True  # the body's hash is signed
    requires_response_body = True  # the 401's error code decides whether to renew

    def __init__(self, provider: PlatformCredentialProvider, project_id: str) -> None:
        self.provider = provider
        self._project_id = project_id

    def __repr__(self) -> str:
        return f"PlatformAuth({self.provider!r}, project_id={self._project_id!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        creds = self.provider.credentials()
        sign(request, creds.signing(), self._project_id)
        response = yield request
        if _renewable(response):
            log.info("platform credentials refused by the API, renewing", status=response.status_code)
            renewed = self.provider.renew(creds.access_key)
            if renewed is not None and renewed.access_key != creds.access_key:
                sign(request, renewed.signing(), self._project_id)
                yield request

    def wire_flow(self, request: WireRequest) -> Generator[WireRequest, WireAnswer, None]:
        """:meth:`auth_flow` on the hand-written wire (:mod:`worker.api.wire`)."""
        creds = self.provider.credentials()
        sign_headers(request.method, request.target, request.headers, creds.signing(), self._project_id)
        answer = yield request
        if renewable(answer.status, answer.body):
            log.info("platform credentials refused by the API, renewing", status=answer.status)
            renewed = self.provider.renew(creds.access_key)
            if renewed is not None and renewed.access_key != creds.access_key:
                sign_headers(request.method, request.target, request.headers, renewed.signing(), self._project_id)
                yield request
