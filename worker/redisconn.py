"""The one way to reach the fleet's Redis: the same timeouts and retries for every user of it.

Workers, the scheduler, the CLI and the exporter all connect through :func:`connect`, so a
setting (or, later, a Sentinel configuration) changes every one of them at once.
"""

from __future__ import annotations

import redis

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
    options: dict[str, int] = {} if max_connections is None else {"max_connections": max_connections}
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_S,
        retry_on_timeout=True,
        **options,
    )
