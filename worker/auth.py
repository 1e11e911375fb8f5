"""Authentication of API calls, in three modes, behind one seam: an :class:`httpx.Auth`.

:func:`build_auth` picks the mode from the settings:

* ``token``: a ready IAM token goes out as ``X-Auth-Token``. It cannot be renewed, so a 401
  passes through unchanged and the caller reports it.
* ``aksk``: every request is signed with ``SDK-HMAC-SHA256`` (:mod:`worker.signer`).
* ``iam``: a password login to IAM gives a project-scoped token (:class:`IamTokenProvider`).

The IAM token is shared by every worker process on every host through Redis, so that a fleet
logs in once, not once per task or per process:

* Key ``{prefix}:auth:token:{h}``, ``h`` = first 16 hex digits of
  ``sha256(user|domain|project|endpoint)``. Value: ``v1.`` + base64 of a 12-byte nonce and the
  AES-GCM ciphertext of ``{"token", "exp", "iat", "iam_expires_at", "rej"}`` (``exp``/``iat``:
  epoch seconds on the writer's clock; ``rej``: fetched to replace a refused token); its Redis
  TTL ends when the token does.
* ``{key}:lock`` (``SET NX PX``, a random owner, compare-and-delete on release): only the holder
  logs in. The others poll the shared value (bounded) and meanwhile keep using a token that is
  still valid, so a renewal never makes anybody wait.
* ``{key}:failed`` (short TTL): a refused login (or an unreachable IAM) is remembered for a
  while, so that 50 workers do not each hammer IAM with a password that cannot work. It holds
  the one-line error text (no secret) and a MAC of the password, so that workers already
  started with a corrected password ignore it.

Encryption: a reader of Redis must not be able to call the API with what it reads. The key is
derived with HKDF-SHA256 from the IAM password (the input keying material) and the user,
domain, project and endpoint (the ``info``): every worker has the password anyway, a Redis
reader does not, and nothing new has to be distributed or rotated. AES-GCM is used rather
than Fernet because it takes HKDF's raw 32-byte output directly, and because its associated
data binds each ciphertext to its Redis key: a value copied under another identity's key does
not decrypt. Nonces are random; one encryption per login keeps the nonce-collision risk nil.
HKDF has no work factor: with the ciphertext, a *weak* password can be guessed offline. The
password is what protects the cache, so it must be a real one (as IAM requires anyway).

Renewal: a token is renewed when less than ``min(iam_token_renew_before_s, lifetime / 3)`` of
it remains. The lifetime is IAM's ``expires_at - issued_at`` measured from this host's clock
at login, so a skewed clock cannot make a fresh token look expired (or the reverse).

A 401 with ``APIGW.0301``/``APIGW.0307`` (tokens can be revoked early) makes the flow fetch a
new token once and retry once; the shared token is dropped only if it is still the one that
failed, so two workers seeing the same 401 cause one login, not two. A second 401 passes
through to the caller. If the API refuses that renewed token too, the identity itself is
refused (revoked, wrong project): for ``rejection_cooldown_s`` no worker logs in again for a
401, the 401 simply passes through, so a fleet cannot turn it into a login per call.

No secret (token, password, SK, security token, derived key) is put in any repr, exception
or log line.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import redis
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from worker.answers import Verdict, classify, parse_error_body
from worker.settings import ENV_PREFIX, Settings
from worker.signer import AkSkCredentials, sign

log = structlog.get_logger(__name__)

NO_CREDENTIALS: Final = (
    "no credentials configured: set SFS_CLEANUP_AUTH_TOKEN, the IAM_* login, or ACCESS_KEY/SECRET_KEY"
)
_JSON: Final = "application/json"
_BLOB_VERSION: Final = "v1."
_HKDF_SALT: Final = b"sfs-turbo-cleanup/iam-token-cache/v1"

# Compare-and-delete: drop a key only while it still holds the value the caller saw.
_DELETE_IF_EQUAL: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class AuthError(Exception):
    """Credentials that cannot work, one line saying what to fix. Never holds a secret.

    Only plain ``str`` arguments, so that it survives pickling through Celery.
    """


class AuthUnavailableError(AuthError):
    """IAM could not be asked (no answer, 5xx, 429, a login by another worker that never ended):
    a transient failure, worth retrying later, unlike a plain :class:`AuthError`."""


# --- The three modes ------------------------------------------------------------------------


def build_auth(
    settings: Settings, redis_client: redis.Redis | None = None, *, http: httpx.Client | None = None
) -> httpx.Auth:
    """The :class:`httpx.Auth` for ``settings.auth_mode``; raise :class:`AuthError` when none fits.

    ``redis_client`` shares the IAM token among processes (without it, each process logs in on
    its own); ``http`` is the client used for the IAM login (default: a new one with the
    settings' timeouts).
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
    raise AuthError(NO_CREDENTIALS)


def _require_project(settings: Settings, why: str) -> str:
    if settings.project_id is None:
        raise AuthError(f"{ENV_PREFIX}PROJECT_ID is required: {why}")
    return settings.project_id


class TokenAuth(httpx.Auth):
    """A ready token as ``X-Auth-Token``; it cannot be renewed, so a 401 passes through."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "TokenAuth(token=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["X-Auth-Token"] = self._token.get_secret_value()
        request.headers.setdefault("Content-Type", _JSON)
        yield request


class AkSkAuth(httpx.Auth):
    """Signs every request (and every retry, with a fresh ``X-Sdk-Date``)."""

    requires_request_body = True  # the body's hash is signed

    def __init__(self, creds: AkSkCredentials, project_id: str) -> None:
        self._creds = creds
        self._project_id = project_id

    def __repr__(self) -> str:
        return f"AkSkAuth({self._creds!r}, project_id={self._project_id!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sign(request, self._creds, self._project_id)
        yield request


def _renewable(response: httpx.Response) -> bool:
    if response.status_code != 401:
        return False
    code, _ = parse_error_body(response.content)
    return classify(401, code) is Verdict.AUTH_RENEW


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
        request.headers["X-Auth-Token"] = token
        request.headers.setdefault("Content-Type", _JSON)
        response = yield request
        if _renewable(response):
            code, _ = parse_error_body(response.content)
            log.info("iam token refused by the API, renewing", code=code, status=response.status_code)
            renewed = self.provider.renew(rejected=token)
            if renewed != token:  # the same token back: renewing cannot help, the 401 stands
                request.headers["X-Auth-Token"] = renewed
                yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # The provider blocks (thread lock, Redis, IAM): keep it off the event loop.
        token = await asyncio.to_thread(self.provider.token)
        request.headers["X-Auth-Token"] = token
        request.headers.setdefault("Content-Type", _JSON)
        response = yield request
        await response.aread()
        if _renewable(response):
            renewed = await asyncio.to_thread(self.provider.renew, token)
            if renewed != token:
                request.headers["X-Auth-Token"] = renewed
                yield request


# --- The IAM token provider -----------------------------------------------------------------


@dataclass(frozen=True)
class IamLogin:
    """Who logs in to IAM, and for which project."""

    endpoint: str
    user: str
    password: SecretStr = field(repr=False)
    domain: str
    project_id: str

    def body(self) -> dict[str, Any]:
        """The password login scoped to the project, exactly as IAM documents it."""
        return {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.user,
                            "password": self.password.get_secret_value(),
                            "domain": {"name": self.domain},
                        }
                    },
                },
                "scope": {"project": {"id": self.project_id}},
            }
        }

    @property
    def identity(self) -> str:
        return "|".join([self.user, self.domain, self.project_id, self.endpoint])


@dataclass(frozen=True)
class CachedToken:
    """A token and its validity on this host's clock (epoch seconds)."""

    value: str = field(repr=False)
    exp: float
    iat: float
    iam_expires_at: str
    # Fetched because the API refused the previous token: if the API refuses this one too,
    # logging in again will not help (see IamTokenProvider.renew).
    after_rejection: bool = False
    blob: str | None = field(default=None, repr=False, compare=False)  # as stored in Redis

    @property
    def lifetime(self) -> float:
        return self.exp - self.iat

    def valid(self, now: float) -> bool:
        return now < self.exp

    def fresh(self, now: float, renew_before_s: float) -> bool:
        return self.exp - now >= min(renew_before_s, self.lifetime / 3)


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
        self._redis = redis_client
        self._renew_before_s = renew_before_s
        self._lock_ttl_ms = max(1, int(lock_ttl_s * 1000))
        self._wait_s = wait_s if wait_s is not None else lock_ttl_s + 5.0
        self._poll_s = poll_s
        self._refused_ttl_s = refused_ttl_s
        self._unavailable_ttl_s = unavailable_ttl_s
        self._rejection_cooldown_s = rejection_cooldown_s
        self._clock = clock
        self._sleep = sleep

        digest = hashlib.sha256(login.identity.encode("utf-8")).hexdigest()[:16]
        self.cache_key = f"{key_prefix}:auth:token:{digest}"
        self.lock_key = f"{self.cache_key}:lock"
        self.failed_key = f"{self.cache_key}:failed"

        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=64,
            salt=_HKDF_SALT,
            info=json.dumps([login.user, login.domain, login.project_id, login.endpoint]).encode("utf-8"),
        ).derive(login.password.get_secret_value().encode("utf-8"))
        self._aead = AESGCM(okm[:32])
        # Tags a remembered failure with the password it happened with (second half of the
        # HKDF output, never the encryption key itself).
        self._password_mac = hmac.new(okm[32:], b"failed-login", hashlib.sha256).hexdigest()[:32]

        self._state_lock = threading.Lock()  # guards _current and _failed
        self._fetch_lock = threading.Lock()  # one thread per process goes to Redis/IAM
        self._current: CachedToken | None = None
        self._failed: tuple[float, AuthError] | None = None  # (until, on the monotonic clock)
        self._redis_warned = False

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
            shared = self._read_shared()
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
                self._redis_call(lambda r: r.eval(_DELETE_IF_EQUAL, 1, self.cache_key, blob))
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
            shared = self._usable(self._read_shared(), rejected, now)
            if shared is not None and shared.fresh(now, self._renew_before_s):
                log.debug("iam token taken from the shared cache", expires_at=shared.iam_expires_at)
                return self._adopt(shared)
            if self._try_lock(owner):
                try:
                    return self._adopt(self._login_holding_lock(rejected, shared or fallback))
                finally:
                    self._unlock(owner)
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
        shared = self._usable(self._read_shared(), rejected, now)
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
            token = replace(self._fetch(), after_rejection=after_rejection)
        except AuthError as exc:
            self._remember_failure(exc)
            raise
        token = replace(token, blob=self._encrypt(token))
        ttl_ms = max(1, int((token.exp - self._clock()) * 1000))
        self._redis_call(lambda r: r.set(self.cache_key, token.blob, px=ttl_ms))
        log.info("iam token fetched", expires_at=token.iam_expires_at)
        return token

    def _fetch(self) -> CachedToken:
        login = self._login
        url = f"{login.endpoint}/v3/auth/tokens"
        started = self._clock()
        try:
            response = self._http.post(
                url, json=login.body(), headers={"Content-Type": "application/json;charset=utf8"}
            )
        except httpx.HTTPError as exc:
            raise AuthUnavailableError(
                f"IAM login failed: no answer from {login.endpoint} ({type(exc).__name__}); "
                "check SFS_CLEANUP_IAM_ENDPOINT and the network"
            ) from None
        status = response.status_code
        if status in (400, 401, 403, 404):
            raise AuthError(self._refusal_line(response))
        if not 200 <= status < 300:
            raise AuthUnavailableError(
                f"IAM login failed: HTTP {status}{self._iam_message(response)} from {login.endpoint}; "
                "will try again later"
            )
        value = response.headers.get("X-Subject-Token")
        expires_at, issued_at = _token_times(response)
        if not value or expires_at is None:
            raise AuthError(
                f"IAM login answered HTTP {status} without a token (X-Subject-Token and "
                f"token.expires_at): check that SFS_CLEANUP_IAM_ENDPOINT ({login.endpoint}) is IAM"
            )
        # Lifetime as IAM states it, placed on this host's clock: immune to clock skew.
        lifetime = expires_at.timestamp() - (issued_at.timestamp() if issued_at else started)
        if lifetime <= 0:
            raise AuthError(
                f"IAM login returned a token that already expired (expires_at {expires_at.isoformat()}): "
                "check this machine's clock (NTP)"
            )
        return CachedToken(value, started + lifetime, started, expires_at.isoformat())

    def _refusal_line(self, response: httpx.Response) -> str:
        status = response.status_code
        what = f"IAM refused the login (HTTP {status}{self._iam_message(response)})"
        if status == 401:
            fix = "check SFS_CLEANUP_IAM_USER, SFS_CLEANUP_IAM_PASSWORD and SFS_CLEANUP_IAM_DOMAIN"
        elif status == 403:
            fix = (
                "the user may not log in with a password, is locked or disabled, or has no access to "
                f"project {self._login.project_id}: check SFS_CLEANUP_IAM_USER, SFS_CLEANUP_IAM_DOMAIN "
                "and SFS_CLEANUP_PROJECT_ID"
            )
        elif status == 404:
            fix = f"no IAM token API at {self._login.endpoint}: check SFS_CLEANUP_IAM_ENDPOINT"
        else:
            fix = "check SFS_CLEANUP_PROJECT_ID (the token's scope), SFS_CLEANUP_IAM_DOMAIN and SFS_CLEANUP_IAM_USER"
        return f"{what}: {fix}"

    def _iam_message(self, response: httpx.Response) -> str:
        """IAM's own explanation, if any, as ``: text`` (one line, bounded, password scrubbed)."""
        text: str | None = None
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict) and error.get("message"):
                text = str(error["message"])
            elif data.get("error_msg"):
                text = str(data["error_msg"])
        if not text:
            return ""
        password = self._login.password.get_secret_value()
        if password:
            text = text.replace(password, "***")
        text = " ".join(text.split())[:200]
        return f": {text}"

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
        record = json.dumps({"mac": self._password_mac, "msg": str(exc), "transient": transient})
        self._redis_call(lambda r: r.set(self.failed_key, record, px=max(1, int(ttl * 1000))))

    def _remembered_failure(self) -> AuthError | None:
        """A recent failed login (this process's, or any worker's with the same password)."""
        with self._state_lock:
            failed = self._failed
            if failed is not None and time.monotonic() >= failed[0]:
                self._failed = failed = None
        if failed is not None:
            return type(failed[1])(str(failed[1]))
        raw = self._redis_call(lambda r: r.get(self.failed_key))
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        # A failure with another password (an operator fixing it) is not ours to repeat.
        if not isinstance(record, dict) or record.get("mac") != self._password_mac:
            return None
        cls = AuthUnavailableError if record.get("transient") else AuthError
        return cls(str(record.get("msg", "IAM login failed")))

    # --- The shared cache -----------------------------------------------------------------

    def _encrypt(self, token: CachedToken) -> str:
        plain = json.dumps(
            {
                "token": token.value,
                "exp": token.exp,
                "iat": token.iat,
                "iam_expires_at": token.iam_expires_at,
                "rej": token.after_rejection,
            }
        ).encode("utf-8")
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plain, self.cache_key.encode("utf-8"))
        return _BLOB_VERSION + base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, blob: str | bytes) -> CachedToken:
        """The token in a stored value; raise :class:`ValueError` if it is not ours to read."""
        text = blob.decode("ascii") if isinstance(blob, bytes) else blob
        if not text.startswith(_BLOB_VERSION):
            raise ValueError("unknown token cache format")
        try:
            raw = base64.b64decode(text[len(_BLOB_VERSION) :], validate=True)
            plain = self._aead.decrypt(raw[:12], raw[12:], self.cache_key.encode("utf-8"))
            data = json.loads(plain)
            return CachedToken(
                value=str(data["token"]),
                exp=float(data["exp"]),
                iat=float(data["iat"]),
                iam_expires_at=str(data["iam_expires_at"]),
                after_rejection=bool(data.get("rej", False)),
                blob=text,
            )
        except (InvalidTag, ValueError, KeyError, TypeError) as exc:
            raise ValueError("the cached token cannot be decrypted with this password") from exc

    def _read_shared(self) -> CachedToken | None:
        blob = self._redis_call(lambda r: r.get(self.cache_key))
        if blob is None:
            return None
        try:
            return self.decrypt(blob)
        except ValueError:
            # Most likely another password (a rotation in progress): treat as absent; the next
            # login overwrites it.
            log.warning("cached iam token unreadable, ignoring it", key=self.cache_key)
            return None

    def _try_lock(self, owner: str) -> bool:
        if self._redis is None:
            return True
        got = self._redis_call(lambda r: r.set(self.lock_key, owner, nx=True, px=self._lock_ttl_ms), failed=True)
        return bool(got)

    def _unlock(self, owner: str) -> None:
        self._redis_call(lambda r: r.eval(_DELETE_IF_EQUAL, 1, self.lock_key, owner))

    def _redis_call(self, op: Callable[[redis.Redis], Any], failed: Any = None) -> Any:
        """Run one Redis command; when Redis is absent or down, behave as without a cache."""
        if self._redis is None:
            return failed
        try:
            return op(self._redis)
        except redis.RedisError as exc:
            if not self._redis_warned:
                self._redis_warned = True
                log.warning("iam token cache unavailable, working without it", error=type(exc).__name__)
            return failed


def _token_times(response: httpx.Response) -> tuple[datetime | None, datetime | None]:
    try:
        data = response.json()
    except ValueError:
        return None, None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, dict):
        return None, None
    return _parse_time(token.get("expires_at")), _parse_time(token.get("issued_at"))


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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
