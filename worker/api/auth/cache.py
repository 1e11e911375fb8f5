"""The fleet-shared IAM token cache in Redis: the token, the login lock, remembered failures.

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

Redis is an optimisation, not a dependency: when it is absent or down, every operation here
behaves as without a cache (each process logs in on its own).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from typing import Any, Final

import redis
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from worker.api.auth.base import AuthError, AuthUnavailableError
from worker.api.auth.iam_login import CachedToken, IamLogin

log = structlog.get_logger(__name__)

_BLOB_VERSION: Final = "v1."
_HKDF_SALT: Final = b"sfs-turbo-cleanup/iam-token-cache/v1"

# Compare-and-delete: drop a key only while it still holds the value the caller saw.
_DELETE_IF_EQUAL: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class SharedTokenCache:
    """One identity's keys in Redis, and the encryption of what is stored under them."""

    def __init__(self, login: IamLogin, redis_client: redis.Redis | None, *, key_prefix: str, lock_ttl_ms: int) -> None:
        self._redis = redis_client
        self._lock_ttl_ms = lock_ttl_ms

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
        self._redis_warned = False

    def __repr__(self) -> str:
        return f"SharedTokenCache(key={self.cache_key!r})"

    # --- The token ------------------------------------------------------------------------

    def encrypt(self, token: CachedToken) -> str:
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

    def read(self) -> CachedToken | None:
        blob = self._call(lambda r: r.get(self.cache_key))
        if blob is None:
            return None
        try:
            return self.decrypt(blob)
        except ValueError:
            # Most likely another password (a rotation in progress): treat as absent; the next
            # login overwrites it.
            log.warning("cached iam token unreadable, ignoring it", key=self.cache_key)
            return None

    def store(self, blob: str, ttl_ms: int) -> None:
        self._call(lambda r: r.set(self.cache_key, blob, px=ttl_ms))

    def delete_if_equal(self, blob: str) -> None:
        """Drop the shared token only while it is still ``blob`` (the one that failed)."""
        self._call(lambda r: r.eval(_DELETE_IF_EQUAL, 1, self.cache_key, blob))

    # --- The login lock -------------------------------------------------------------------

    def try_lock(self, owner: str) -> bool:
        if self._redis is None:
            return True
        got = self._call(lambda r: r.set(self.lock_key, owner, nx=True, px=self._lock_ttl_ms), failed=True)
        return bool(got)

    def unlock(self, owner: str) -> None:
        self._call(lambda r: r.eval(_DELETE_IF_EQUAL, 1, self.lock_key, owner))

    # --- Remembered failures --------------------------------------------------------------

    def store_failure(self, exc: AuthError, ttl_s: float) -> None:
        transient = isinstance(exc, AuthUnavailableError)
        record = json.dumps({"mac": self._password_mac, "msg": str(exc), "transient": transient})
        self._call(lambda r: r.set(self.failed_key, record, px=max(1, int(ttl_s * 1000))))

    def load_failure(self) -> AuthError | None:
        """Any worker's recent failed login with the same password."""
        raw = self._call(lambda r: r.get(self.failed_key))
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

    def _call(self, op: Callable[[redis.Redis], Any], failed: Any = None) -> Any:
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
