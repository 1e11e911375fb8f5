"""Sentinel settings: parsed, checked with one line per problem, and turned into every client's config
without a password in any URL (the broker's banner, Flower and `celery inspect conf` show URLs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.celery_app import create_app
from worker.redisconn import broker_settings, connect, redbeat_settings
from worker.settings import SettingsError, load_settings

SENTINEL_ENV = {
    "SFS_CLEANUP_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26380,[fd00::3]:26381",
    "SFS_CLEANUP_REDIS_SENTINEL_MASTER": "sfs-primary",
    "SFS_CLEANUP_REDIS_SENTINEL_PASSWORD": "SENTINEL-s3cr3t",
    "SFS_CLEANUP_REDIS_URL": "redis://:REDIS-s3cr3t@ignored-host:6379/3",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("SFS_CLEANUP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _problems(**env: str) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(**{k.removeprefix("SFS_CLEANUP_").lower(): v for k, v in env.items()})
    return caught.value.lines


def _settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings(**{k.removeprefix("SFS_CLEANUP_").lower(): v for k, v in env.items()})


def test_sentinels_with_password_and_db_from_the_url() -> None:
    target = _settings(**SENTINEL_ENV).redis
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("fd00::3", 26381))
    assert (target.master, target.db, target.password) == ("sfs-primary", 3, "REDIS-s3cr3t")
    assert target.sentinel_password == "SENTINEL-s3cr3t"
    assert "s3cr3t" not in repr(target)


def test_own_password_and_db_settings_win_over_the_url() -> None:
    target = _settings(**SENTINEL_ENV, SFS_CLEANUP_REDIS_PASSWORD="OWN-s3cr3t", SFS_CLEANUP_REDIS_DB="5").redis
    assert (target.password, target.db) == ("OWN-s3cr3t", 5)


def test_a_plain_url_has_no_sentinels() -> None:
    settings = _settings(SFS_CLEANUP_REDIS_URL="redis://127.0.0.1:6390/2")
    assert settings.redis.sentinels == ()
    assert broker_settings(settings)["broker_url"] == "redis://127.0.0.1:6390/2"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"SFS_CLEANUP_REDIS_SENTINELS": "10.0.0.1"},
            "SFS_CLEANUP_REDIS_SENTINELS: '10.0.0.1' is not host:port (port 1-65535)",
        ),
        (
            {"SFS_CLEANUP_REDIS_SENTINELS": "10.0.0.1:99999"},
            "SFS_CLEANUP_REDIS_SENTINELS: '10.0.0.1:99999' is not host:port (port 1-65535)",
        ),
        (
            {"SFS_CLEANUP_REDIS_SENTINELS": "10.0.0.1:26379"},
            "SFS_CLEANUP_REDIS_SENTINEL_MASTER: is required with SFS_CLEANUP_REDIS_SENTINELS",
        ),
        (
            {"SFS_CLEANUP_REDIS_SENTINEL_MASTER": "m"},
            "SFS_CLEANUP_REDIS_SENTINEL_MASTER: only used with SFS_CLEANUP_REDIS_SENTINELS "
            "(without them, put it in SFS_CLEANUP_REDIS_URL)",
        ),
        (
            {"SFS_CLEANUP_REDIS_PASSWORD": "x"},
            "SFS_CLEANUP_REDIS_PASSWORD: only used with SFS_CLEANUP_REDIS_SENTINELS "
            "(without them, put it in SFS_CLEANUP_REDIS_URL)",
        ),
        (
            {**SENTINEL_ENV, "SFS_CLEANUP_BROKER_URL": "redis://elsewhere:6379/0"},
            "SFS_CLEANUP_BROKER_URL: leave it unset with SFS_CLEANUP_REDIS_SENTINELS: the broker is the same "
            "Redis, found through the Sentinels",
        ),
        (
            {**SENTINEL_ENV, "SFS_CLEANUP_REDIS_URL": "rediss://h:6379/0"},
            "SFS_CLEANUP_REDIS_URL: with SFS_CLEANUP_REDIS_SENTINELS it must be a redis:// URL (TLS and unix "
            "sockets are not supported through Sentinel), and only its password and database are used",
        ),
    ],
)
def test_bad_sentinel_settings_are_one_line_naming_the_variable(env: dict[str, str], line: str) -> None:
    assert line in _problems(**env)


def test_replica_count_and_timeout_are_bounded() -> None:
    lines = _problems(SFS_CLEANUP_REDIS_MIN_REPLICAS="-1", SFS_CLEANUP_REDIS_WAIT_TIMEOUT_MS="0")
    assert any(line.startswith("SFS_CLEANUP_REDIS_MIN_REPLICAS:") for line in lines)
    assert any(line.startswith("SFS_CLEANUP_REDIS_WAIT_TIMEOUT_MS:") for line in lines)


def test_the_broker_goes_through_kombus_sentinel_transport_with_no_secret_in_its_url() -> None:
    settings = _settings(**SENTINEL_ENV)
    app = create_app(settings)
    url = app.conf.broker_url
    assert url == "sentinel://10.0.0.1:26379/3;sentinel://10.0.0.2:26380/3;sentinel://[fd00::3]:26381/3"
    assert app.conf.broker_password == "REDIS-s3cr3t"
    options = app.conf.broker_transport_options
    assert options["master_name"] == "sfs-primary"
    assert options["sentinel_kwargs"]["password"] == "SENTINEL-s3cr3t"
    assert options["visibility_timeout"] == settings.visibility_timeout_s  # the rest kept
    with app.connection_for_write() as conn:
        assert conn.transport_cls == "sentinel"
        assert conn.password == "REDIS-s3cr3t"
        assert "s3cr3t" not in conn.as_uri()


def test_redbeat_follows_the_sentinels_with_no_secret_in_its_url() -> None:
    conf = redbeat_settings(_settings(**SENTINEL_ENV), {"socket_timeout": 30})
    assert conf["redbeat_redis_url"] == "redis-sentinel://10.0.0.1:26379/3"
    options = conf["redbeat_redis_options"]
    assert options["sentinels"][1] == ("10.0.0.2", 26380)
    assert (options["service_name"], options["db"], options["password"]) == ("sfs-primary", 3, "REDIS-s3cr3t")
    assert options["sentinel_kwargs"]["password"] == "SENTINEL-s3cr3t"


def test_the_redis_client_asks_the_sentinels_for_its_primary() -> None:
    client = connect(_settings(**SENTINEL_ENV))
    pool = client.connection_pool
    assert pool.service_name == "sfs-primary"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "REDIS-s3cr3t"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380, 26381]
    assert all(s.connection_pool.connection_kwargs["password"] == "SENTINEL-s3cr3t" for s in sentinels)
