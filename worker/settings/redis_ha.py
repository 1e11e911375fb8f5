"""The Redis high-availability settings: Sentinel discovery and replica acknowledgement (``WAIT``).

With ``SFS_CLEANUP_REDIS_SENTINELS`` set, every Redis user (the ledger, limiter, token cache,
CLI, exporter, Celery's broker and RedBeat) asks the Sentinels for the current primary and
follows a failover on its own; ``SFS_CLEANUP_REDIS_URL`` then only lends its password, user name
and database (its host is not used). See docs/deploy.md, "Redis high availability".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from worker.settings.base import ENV_PREFIX, CommaList, split_commas


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to log in, with the secrets apart from anything printable."""

    sentinels: tuple[tuple[str, int], ...]  # empty: a plain URL
    master: str | None
    db: int
    username: str | None
    password: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:  # never the passwords
        where = ",".join(f"{h}:{p}" for h, p in self.sentinels) or "url"
        return f"RedisTarget({where}, master={self.master!r}, db={self.db})"


def parse_sentinel(item: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) or a ValueError naming the item."""
    host, sep, port = item.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{item[:60]!r} is not host:port (port 1-65535)")
    return host, int(port)


class RedisHASettings(BaseSettings):
    """The ``SFS_CLEANUP_REDIS_SENTINEL*``, ``REDIS_PASSWORD``/``DB`` and replication fields."""

    redis_sentinels: CommaList = Field(
        default_factory=list,
        description="host:port of each Redis Sentinel, comma-separated; set: Redis is found through them.",
    )
    redis_sentinel_master: str | None = Field(
        None, description="The Sentinels' name of the primary (`sentinel monitor NAME ...`); needed with SENTINELS."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password of the Sentinels themselves (their `requirepass`); unset: none."
    )
    redis_password: SecretStr | None = Field(
        None, description="Password of the Redis primary and replicas; unset: the one in REDIS_URL, if any."
    )
    redis_db: int | None = Field(None, ge=0, le=15, description="Redis database number; unset: REDIS_URL's (0).")
    redis_min_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Replicas that must hold a write-ahead record or final outcome before it counts (WAIT); 0: off.",
    )
    redis_wait_timeout_ms: int = Field(
        1000, ge=10, le=60000, description="Longest wait for those replicas; fewer: the DELETE is not sent."
    )

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _sentinel_list(cls, value: Any) -> Any:
        return split_commas(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_items(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_sentinel(item)
        return value

    def _redis_ha_problems(self, redis_url: str, broker_url_set: bool) -> list[str]:
        P = ENV_PREFIX  # noqa: N806 - reads better in the messages below
        problems: list[str] = []
        if self.redis_sentinels:
            if not self.redis_sentinel_master:
                problems.append(f"{P}REDIS_SENTINEL_MASTER: is required with {P}REDIS_SENTINELS")
            if urlsplit(redis_url).scheme != "redis":
                problems.append(
                    f"{P}REDIS_URL: with {P}REDIS_SENTINELS it must be a redis:// URL (TLS and unix sockets "
                    "are not supported through Sentinel), and only its password and database are used"
                )
            if broker_url_set:
                problems.append(
                    f"{P}BROKER_URL: leave it unset with {P}REDIS_SENTINELS: the broker is the same Redis, "
                    "found through the Sentinels"
                )
        else:
            # Without Sentinels the URL says it all: a second source of the same value could disagree.
            stray = [
                name
                for name, value in (
                    ("REDIS_SENTINEL_MASTER", self.redis_sentinel_master),
                    ("REDIS_SENTINEL_PASSWORD", self.redis_sentinel_password),
                    ("REDIS_PASSWORD", self.redis_password),
                    ("REDIS_DB", self.redis_db),
                )
                if value is not None
            ]
            problems.extend(
                f"{P}{name}: only used with {P}REDIS_SENTINELS (without them, put it in {P}REDIS_URL)" for name in stray
            )
        return problems

    def redis_target(self, redis_url: str) -> RedisTarget:
        """The Redis to reach: Sentinels and the master name, or none (the URL as is)."""
        parts = urlsplit(redis_url)
        path_db = parts.path.lstrip("/")
        db = self.redis_db if self.redis_db is not None else int(path_db) if path_db.isdigit() else 0
        password = (
            self.redis_password.get_secret_value()
            if self.redis_password is not None
            else unquote(parts.password)
            if parts.password
            else None
        )
        return RedisTarget(
            sentinels=tuple(parse_sentinel(item) for item in self.redis_sentinels),
            master=self.redis_sentinel_master,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=password,
            sentinel_password=(
                self.redis_sentinel_password.get_secret_value() if self.redis_sentinel_password else None
            ),
        )
