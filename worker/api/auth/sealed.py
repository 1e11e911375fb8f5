"""One secret value shared by the fleet through Redis, sealed: AES-GCM under a key derived
(HKDF-SHA256) from a secret every worker has and a reader of Redis does not.

The IAM token cache (:mod:`worker.api.auth.cache`) derives its key from the IAM password; the
platform credentials have no such password, so their key comes from a fleet secret setting
(``SFS_CLEANUP_METADATA_CACHE_KEY``). As there, the Redis key is the associated data, so a value
copied under another key does not open, a ``{key}:lock`` (``SET NX PX``, compare-and-delete on
release) lets one process fetch while the others wait, and Redis being absent or down means
"no cache": every process then fetches on its own.
"""

from __future__ import annotations

import base64
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
from pydantic import SecretStr

log = structlog.get_logger(__name__)

_VERSION: Final = "v1."
_DELETE_IF_EQUAL: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class SealedStore:
    """``key`` in Redis, holding a JSON object sealed with a key derived from ``secret``."""

    def __init__(
        self,
        redis_client: redis.Redis | None,
        *,
        key: str,
        secret: SecretStr,
        salt: bytes,
        info: bytes,
        lock_ttl_ms: int,
    ) -> None:
        self._redis = redis_client
        self.key = key
        self.lock_key = f"{key}:lock"
        self._lock_ttl_ms = lock_ttl_ms
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(
            secret.get_secret_value().encode("utf-8")
        )
        self._aead = AESGCM(derived)
        self._warned = False

    def __repr__(self) -> str:
        return f"SealedStore(key={self.key!r})"

    def seal(self, value: dict[str, Any]) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, json.dumps(value).encode("utf-8"), self.key.encode("utf-8"))
        return _VERSION + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, blob: str | bytes) -> dict[str, Any]:
        """The value in ``blob``; :class:`ValueError` when it is not ours to read."""
        text = blob.decode("ascii") if isinstance(blob, bytes) else blob
        if not text.startswith(_VERSION):
            raise ValueError("unknown sealed value format")
        try:
            raw = base64.b64decode(text[len(_VERSION) :], validate=True)
            value = json.loads(self._aead.decrypt(raw[:12], raw[12:], self.key.encode("utf-8")))
        except (InvalidTag, ValueError, TypeError) as exc:
            raise ValueError("the shared value cannot be opened with this key") from exc
        if not isinstance(value, dict):
            raise ValueError("the shared value is not an object")
        return value

    def read(self) -> tuple[dict[str, Any], str] | None:
        """The shared value and its stored form, or None (absent, unreadable, Redis down)."""
        blob = self._call(lambda r: r.get(self.key))
        if blob is None:
            return None
        text = blob.decode("ascii") if isinstance(blob, bytes) else str(blob)
        try:
            return self.open(text), text
        except ValueError:
            # Another key (a rotation in progress): treat as absent; the next fetch overwrites it.
            log.warning("shared credentials unreadable, ignoring them", key=self.key)
            return None

    def store(self, blob: str, ttl_ms: int) -> None:
        self._call(lambda r: r.set(self.key, blob, px=max(1, ttl_ms)))

    def delete_if_equal(self, blob: str) -> None:
        self._call(lambda r: r.eval(_DELETE_IF_EQUAL, 1, self.key, blob))

    def try_lock(self, owner: str) -> bool:
        if self._redis is None:
            return True
        return bool(self._call(lambda r: r.set(self.lock_key, owner, nx=True, px=self._lock_ttl_ms), failed=True))

    def unlock(self, owner: str) -> None:
        self._call(lambda r: r.eval(_DELETE_IF_EQUAL, 1, self.lock_key, owner))

    def _call(self, op: Callable[[redis.Redis], Any], failed: Any = None) -> Any:
        if self._redis is None:
            return failed
        try:
            return op(self._redis)
        except redis.RedisError as exc:
            if not self._warned:
                self._warned = True
                log.warning("shared credential cache unavailable, working without it", error=type(exc).__name__)
            return failed
