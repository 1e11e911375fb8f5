"""The ``iam`` mode: a password login to IAM gives a project-scoped token, shared and renewed.

:class:`IamTokenProvider` gets the token from memory, else from the fleet-shared cache
(:mod:`worker.api.auth.cache`), else from a login (:mod:`worker.api.auth.iam_login`) made by
one process of the fleet while the others wait for it; :class:`IamAuth` puts it on requests.

Renewal: a token is renewed when less than ``min(iam_token_renew_before_s, lifetime / 3)`` of
it remains. The lifetime is IAM's ``expires_at - issued_at`` measured from this host's clock
at login, so a skewed clock cannot make a fresh token look expired (or the reverse).

A 401 with ``APIGW.0301``/``APIGW.0307`` (tokens can be revoked early) makes the flow fetch a
new token once and retry once; the shared token is dropped only if it is still the one that
failed, so two workers seeing the same 401 cause one login, not two. A second 401 passes
through to the caller. If the API refuses that renewed token too, the identity itself is
refused (revoked, wrong project): for ``rejection_cooldown_s`` no worker logs in again for a
401, the 401 simply passes through, so a fleet cannot turn it into a login per call.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import replace

import httpx
import redis
import structlog

from worker.api.answers import parse_error_body
from worker.api.auth.base import AuthError, AuthUnavailableError, put_token, put_wire_token, renewable
from worker.api.auth.cache import SharedTokenCache
from worker.api.auth.iam_login import CachedToken, IamLogin, fetch_token
from worker.api.wire import WireAnswer, WireRequest

log = structlog.get_logger(__name__)


def _renewable(response: httpx.Response) -> bool:
    return renewable(response.status_code, response.content)


class IamAuth(httpx.Auth):
    """``X-Auth-Token`` from an :class:`IamTokenProvider`; one renewal and one retry on a 401
    ``APIGW.0301``/``APIGW.0307``."""

    requires_response_body = True  # the 401's error code decides whether to renew

    def __init__(self, provider: IamTokenProvider) -> None:
        self.provider = provider

    def __repr__(self) -> str:
        return f"IamAuth({self.provider!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.provider.token()
        put_token(request, token)
        response = yield request
        if _renewable(response):
            code, _ = parse_error_body(response.content)
            log.info("iam token refused by the API, renewing", code=code, status=response.status_code)
            renewed = self.provider.renew(rejected=token)
            if renewed != token:  # the same token back: renewing cannot help, the 401 stands
                request.headers["X-Auth-Token"] = renewed
                yield request

    def wire_flow(self, request: WireRequest) -> Generator[WireRequest, WireAnswer, None]:
        """:meth:`auth_flow` on the hand-written wire (:mod:`worker.api.wire`)."""
        token = self.provider.token()
        put_wire_token(request.headers, token)
        answer = yield request
        if renewable(answer.status, answer.body):
            code, _ = parse_error_body(answer.body)
            log.info("iam token refused by the API, renewing", code=code, status=answer.status)
            renewed = self.provider.renew(rejected=token)
            if renewed != token:
                request.headers["X-Auth-Token"] = renewed
                yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # The provider blocks (thread lock, Redis, IAM): keep it off the event loop.
        token = await asyncio.to_thread(self.provider.token)
        put_token(request, token)
        response = yield request
        await response.aread()
        if _renewable(response):
            renewed = await asyncio.to_thread(self.provider.renew, token)
            if renewed != token:
                request.headers["X-Auth-Token"] = renewed
                yield request


class IamTokenProvider:
    """Gets, caches, shares and renews a project-scoped IAM token. Thread-safe.

    ``clock`` is wall-clock epoch seconds (token expiry is wall-clock time); ``sleep`` is used
    between polls of the shared cache. Both are injectable for tests.
    """

    def __init__(
        self,
        login: IamLogin,
        *,
        http: httpx.Client,
        redis_client: redis.Redis | None = None,
        key_prefix: str = "sfs",
        renew_before_s: float = 3600.0,
        lock_ttl_s: float = 40.0,
        wait_s: float | None = None,
        poll_s: float = 0.05,
        refused_ttl_s: float = 30.0,
        unavailable_ttl_s: float = 5.0,
        rejection_cooldown_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._login = login
        self._http = http
        self._renew_before_s = renew_before_s
        self._lock_ttl_ms = max(1, int(lock_ttl_s * 1000))
        self._wait_s = wait_s if wait_s is not None else lock_ttl_s + 5.0
        self._poll_s = poll_s
        self._refused_ttl_s = refused_ttl_s
        self._unavailable_ttl_s = unavailable_ttl_s
        self._rejection_cooldown_s = rejection_cooldown_s
        self._clock = clock
        self._sleep = sleep

        self._cache = SharedTokenCache(login, redis_client, key_prefix=key_prefix, lock_ttl_ms=self._lock_ttl_ms)
        self.cache_key = self._cache.cache_key
        self.lock_key = self._cache.lock_key
        self.failed_key = self._cache.failed_key

        self._state_lock = threading.Lock()  # guards _current and _failed
        self._fetch_lock = threading.Lock()  # one thread per process goes to Redis/IAM
        self._current: CachedToken | None = None
        self._failed: tuple[float, AuthError] | None = None  # (until, on the monotonic clock)

    def __repr__(self) -> str:
        login = self._login
        return (
            f"IamTokenProvider(endpoint={login.endpoint!r}, user={login.user!r}, "
            f"domain={login.domain!r}, project_id={login.project_id!r})"
        )

    # --- Public ---------------------------------------------------------------------------

    def token(self) -> str:
        """A valid token: from memory, else from Redis, else from a login (by one process)."""
        now = self._clock()
        with self._state_lock:
            current = self._current
        if current is not None and current.fresh(now, self._renew_before_s):
            return current.value
        if current is not None and current.valid(now):
            # Due for renewal but still good: if another thread is renewing, don't wait for it.
            if not self._fetch_lock.acquire(blocking=False):
                return current.value
        elif not self._fetch_lock.acquire(timeout=self._wait_s + self._lock_ttl_ms / 1000):
            raise AuthUnavailableError(self._wait_message())
        try:
            return self._refresh(rejected=None).value
        finally:
            self._fetch_lock.release()

    def renew(self, rejected: str) -> str:
        """A token to replace ``rejected``, which the API refused (401 APIGW.0301/0307).

        Returns ``rejected`` itself when renewing cannot help: it was fetched moments ago to
        replace a refused token, so the API refuses this identity's tokens (revoked user, wrong
        project...) and a login per call would only hammer IAM, fleet-wide.
        """
        if not self._fetch_lock.acquire(timeout=self._wait_s + self._lock_ttl_ms / 1000):
            raise AuthUnavailableError(self._wait_message())
        try:
            with self._state_lock:
                current = self._current
            if current is not None and current.value != rejected:
                return current.value  # another thread already replaced it
            shared = self._cache.read()
            known = current if current is not None else shared if shared and shared.value == rejected else None
            if known is not None and known.after_rejection and self._clock() - known.iat < self._rejection_cooldown_s:
                log.warning(
                    "the API refused a freshly renewed iam token; not logging in again",
                    fetched_s_ago=round(self._clock() - known.iat, 1),
                )
                return rejected
            with self._state_lock:
                self._current = None
            if shared is not None and shared.value == rejected and (blob := shared.blob) is not None:
                # Only if it is still the token that failed: another worker may have stored a
                # new one meanwhile, and deleting that would cost a second login.
                self._cache.delete_if_equal(blob)
            return self._refresh(rejected=rejected).value
        finally:
            self._fetch_lock.release()

    # --- The refresh loop -----------------------------------------------------------------

    def _refresh(self, rejected: str | None) -> CachedToken:
        """Called with the fetch lock held."""
        now = self._clock()
        with self._state_lock:
            current = self._current
        if current is not None and current.value != rejected and current.fresh(now, self._renew_before_s):
            return current  # another thread refreshed it while this one waited for the lock
        fallback = self._usable(current, rejected, now)
        if (failure := self._remembered_failure()) is not None:
            if fallback is not None:
                return fallback
            raise failure

        deadline = time.monotonic() + self._wait_s
        owner = base64.urlsafe_b64encode(os.urandom(12)).decode("ascii")
        while True:
            now = self._clock()
            shared = self._usable(self._cache.read(), rejected, now)
            if shared is not None and shared.fresh(now, self._renew_before_s):
                log.debug("iam token taken from the shared cache", expires_at=shared.iam_expires_at)
                return self._adopt(shared)
            if self._cache.try_lock(owner):
                try:
                    return self._adopt(self._login_holding_lock(rejected, shared or fallback))
                finally:
                    self._cache.unlock(owner)
            # Another worker is logging in: a still-valid token keeps the work going meanwhile.
            if shared is not None:
                return self._adopt(shared)
            if fallback is not None:
                return fallback
            if (failure := self._remembered_failure()) is not None:
                raise failure
            if time.monotonic() >= deadline:
                raise AuthUnavailableError(self._wait_message())
            self._sleep(self._poll_s)

    def _login_holding_lock(self, rejected: str | None, fallback: CachedToken | None) -> CachedToken:
        # Double check: the previous holder may have stored a token just before releasing the
        # lock that this process has now taken.
        now = self._clock()
        shared = self._usable(self._cache.read(), rejected, now)
        if shared is not None and shared.fresh(now, self._renew_before_s):
            return shared
        # ... or refused a login just before releasing it: one refusal is enough for the fleet.
        if (failure := self._remembered_failure()) is not None:
            if fallback is not None:
                return fallback
            raise failure
        try:
            return self._fetch_and_store(after_rejection=rejected is not None)
        except AuthError as exc:
            if fallback is None or not fallback.valid(self._clock()):
                raise
            # A failed renewal is not an outage while the old token still works.
            log.warning("iam token renewal failed, using the current token meanwhile", reason=str(exc))
            return fallback

    @staticmethod
    def _usable(token: CachedToken | None, rejected: str | None, now: float) -> CachedToken | None:
        if token is None or token.value == rejected or not token.valid(now):
            return None
        return token

    def _adopt(self, token: CachedToken) -> CachedToken:
        with self._state_lock:
            self._current = token
        return token

    def _wait_message(self) -> str:
        return (
            f"no IAM token: another worker's login to {self._login.endpoint} did not finish within "
            f"{self._wait_s:.0f} s; check that SFS_CLEANUP_IAM_ENDPOINT is reachable"
        )

    # --- Login ----------------------------------------------------------------------------

    def _fetch_and_store(self, *, after_rejection: bool) -> CachedToken:
        try:
            token = replace(fetch_token(self._login, self._http, self._clock), after_rejection=after_rejection)
        except AuthError as exc:
            self._remember_failure(exc)
            raise
        blob = self._cache.encrypt(token)
        token = replace(token, blob=blob)
        ttl_ms = max(1, int((token.exp - self._clock()) * 1000))
        self._cache.store(blob, ttl_ms)
        log.info("iam token fetched", expires_at=token.iam_expires_at)
        return token

    # --- Remembered failures --------------------------------------------------------------

    def _remember_failure(self, exc: AuthError) -> None:
        transient = isinstance(exc, AuthUnavailableError)
        ttl = self._unavailable_ttl_s if transient else self._refused_ttl_s
        if ttl <= 0:
            return
        with self._state_lock:
            self._failed = (time.monotonic() + ttl, exc)
        if not transient:
            log.warning("iam login refused", reason=str(exc))
        self._cache.store_failure(exc, ttl)

    def _remembered_failure(self) -> AuthError | None:
        """A recent failed login (this process's, or any worker's with the same password)."""
        with self._state_lock:
            failed = self._failed
            if failed is not None and time.monotonic() >= failed[0]:
                self._failed = failed = None
        if failed is not None:
            return type(failed[1])(str(failed[1]))
        return self._cache.load_failure()

    # --- The shared cache, as tests and tools see it ---------------------------------------

    def _encrypt(self, token: CachedToken) -> str:
        return self._cache.encrypt(token)

    def decrypt(self, blob: str | bytes) -> CachedToken:
        """The token in a stored value; raise :class:`ValueError` if it is not ours to read."""
        return self._cache.decrypt(blob)
