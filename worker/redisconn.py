"""The one way to reach the fleet's Redis: the same timeouts and retries for every user of it.

Workers, the scheduler, the CLI and the exporter all connect through :func:`connect`, so a
setting (or a Sentinel configuration) changes every one of them at once. Celery's broker and
RedBeat take theirs from :func:`broker_settings` and :func:`redbeat_settings` (their clients
are built by kombu and RedBeat, not here).

Through Sentinel, each new connection asks the Sentinels for the current primary; a connection
to a primary that went away (or came back as a replica and answers READONLY) is dropped and
retried, so a failover is followed without a restart.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from worker.settings import Settings

#: A command gets this long for its answer; a Lua script or a pipeline of a batch takes milliseconds.
SOCKET_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 5
#: A connection idle this long is pinged before use: a Redis restarted meanwhile is found at once.
HEALTH_CHECK_S = 25


def connect(
    settings: Settings, *, max_connections: int | None = None, socket_timeout_s: float = SOCKET_TIMEOUT_S
) -> redis.Redis:
    """A client of the fleet's Redis (``SFS_CLEANUP_REDIS_URL``).

    ``max_connections`` bounds the pool (a worker process: its delete threads and the job's own
    calls); ``None`` leaves redis-py's default. ``socket_timeout_s`` is shorter only where an
    answer is owed sooner than Redis may take (the exporter answers within a scrape's timeout).
    """
    options: dict[str, Any] = {} if max_connections is None else {"max_connections": max_connections}
    options |= {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_S,
        "retry_on_timeout": True,
    }
    target = settings.redis
    if not target.sentinels:
        return redis.Redis.from_url(settings.redis_url, **options)
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs=sentinel_kwargs(settings) | {"socket_timeout": min(socket_timeout_s, 5)},
    )
    return sentinel.master_for(
        target.master or "",
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """Options of the connections to the Sentinels themselves (their own password, if any)."""
    target = settings.redis
    options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S}
    if target.sentinel_password is not None:
        options["password"] = target.sentinel_password
    return options


def broker_settings(settings: Settings) -> dict[str, Any]:
    """Celery's ``broker_*`` configuration for the fleet's Redis (merged into ``broker_transport_options``).

    Through Sentinel: kombu's ``sentinel://`` transport, one URL per Sentinel joined by ``;``.
    The passwords travel in ``broker_password`` and the transport options, never in the URL, so
    neither the worker's banner, its logs nor Flower's broker page can show them (``celery
    inspect conf`` masks keys named like a password).
    """
    target = settings.redis
    if not target.sentinels:
        return {"broker_url": settings.broker_url, "transport_options": {}}
    url = ";".join(f"sentinel://{_netloc(host, port)}/{target.db}" for host, port in target.sentinels)
    conf: dict[str, Any] = {"broker_url": url, "transport_options": {"master_name": target.master}}
    if target.username is not None:
        conf["broker_user"] = target.username
    if target.password is not None:
        conf["broker_password"] = target.password
    # kombu passes these to the Sentinel connections; the master's own come from the options above.
    conf["transport_options"]["sentinel_kwargs"] = sentinel_kwargs(settings) | {"socket_timeout": 5}
    return conf


def redbeat_settings(settings: Settings, base_options: dict[str, Any]) -> dict[str, Any]:
    """``redbeat_redis_url`` and ``redbeat_redis_options``; no password in the URL (see above)."""
    target = settings.redis
    if not target.sentinels:
        url, auth = split_credentials(settings.redis_url)
        return {"redbeat_redis_url": url, "redbeat_redis_options": base_options | auth}
    options = base_options | {
        # RedBeat's Sentinel branch reads these keys itself (redbeat.schedulers.get_redis).
        "sentinels": list(target.sentinels),
        "service_name": target.master,
        "db": target.db,
        "sentinel_kwargs": sentinel_kwargs(settings) | {"socket_timeout": 5},
    }
    if target.password is not None:
        options["password"] = target.password
    if target.username is not None:
        options["username"] = target.username
    host, port = target.sentinels[0]
    return {
        "redbeat_redis_url": f"redis-sentinel://{_netloc(host, port)}/{target.db}",
        "redbeat_redis_options": options,
    }


def _netloc(host: str, port: int) -> str:
    return (f"[{host}]" if ":" in host else host) + f":{port}"


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """A Redis URL without its user name and password, and those as client options."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    options = {"username": unquote(parts.username)} if parts.username else {}
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}", options
