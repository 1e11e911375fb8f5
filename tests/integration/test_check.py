"""``sfs-cleanup check`` against real redis-servers: AOF and eviction warnings, a provider that
disables CONFIG (and INFO), the schedule's settings, and what --json and --quiet print."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.redis_server import RedisServer, free_port
from tests.support.environment import cli_command, inherited

pytestmark = pytest.mark.integration

NO_CONFIG = ("--rename-command", "CONFIG", "")  # what managed Redis often does
NO_INFO = ("--rename-command", "INFO", "")


@pytest.fixture(scope="module")
def durable() -> Iterator[RedisServer]:
    """AOF on and noeviction: nothing to warn about."""
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def evicting() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True, extra_args=("--maxmemory-policy", "allkeys-lru")) as server:
        yield server


@pytest.fixture(scope="module")
def managed() -> Iterator[RedisServer]:
    """CONFIG disabled, as a managed Redis has it; AOF off, so INFO has something to show."""
    with RedisServer(appendonly=False, extra_args=NO_CONFIG) as server:
        yield server


@pytest.fixture(scope="module")
def locked_down() -> Iterator[RedisServer]:
    """CONFIG and INFO both disabled: nothing about persistence can be read."""
    with RedisServer(appendonly=False, extra_args=NO_CONFIG + NO_INFO) as server:
        yield server


def check(tmp_path: Path, redis_url: str, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = inherited() | {"SFS_CLEANUP_REDIS_URL": redis_url, "COLUMNS": "80"}
    env |= {f"SFS_CLEANUP_{name.upper()}": value for name, value in settings.items()}
    # In tmp_path: no .env is read.
    return subprocess.run(
        cli_command("check", *args), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )


def one_json(stdout: str) -> dict[str, Any]:
    """stdout holds exactly one JSON object, on one line, and nothing else."""
    assert stdout.count("\n") == 1 and stdout.endswith("\n"), stdout
    found = json.loads(stdout)
    assert isinstance(found, dict)
    return found


def test_a_durable_redis_passes_with_no_warning(tmp_path: Path, durable: RedisServer) -> None:
    result = check(tmp_path, durable.url, "--json")
    assert result.returncode == 0, result.stderr
    found = one_json(result.stdout)
    assert found["ok"] is True and found["errors"] == [] and found["warnings"] == [] and found["unchecked"] == []
    assert found["redis"] == {
        "reachable": True,
        "appendonly": "yes",
        "maxmemory_policy": "noeviction",
        "read_with": ["CONFIG GET"],
        "refused": [],
    }
    assert found["settings"]["schedule"] == {"enabled": False, "cron": "0 2 * * *", "timezone": "UTC"}
    assert result.stderr == ""


def test_aof_off_is_a_warning_not_an_error(tmp_path: Path, redis_url: str) -> None:
    # The session's Redis runs without AOF (tests/conftest.py).
    found = one_json(check(tmp_path, redis_url, "--json").stdout)
    assert found["ok"] is True
    assert [w for w in found["warnings"] if w.startswith("Redis AOF is off")], found
    text = check(tmp_path, redis_url)
    assert text.returncode == 0, text.stderr
    assert "appendonly no" in text.stdout
    assert [line for line in text.stderr.splitlines() if line.startswith("warning: Redis AOF is off")], text.stderr


def test_an_evicting_policy_is_a_warning_naming_it(tmp_path: Path, evicting: RedisServer) -> None:
    result = check(tmp_path, evicting.url)
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("warning: Redis maxmemory-policy is allkeys-lru, not noeviction"), line
    assert "maxmemory-policy allkeys-lru" in result.stdout


def test_config_disabled_reads_the_same_facts_from_info(tmp_path: Path, managed: RedisServer) -> None:
    result = check(tmp_path, managed.url, "--json")
    assert result.returncode == 0, result.stderr
    found = one_json(result.stdout)
    redis = found["redis"]
    assert (redis["appendonly"], redis["maxmemory_policy"], redis["read_with"]) == ("no", "noeviction", ["INFO"])
    assert len(redis["refused"]) == 1 and "unknown command 'CONFIG'" in redis["refused"][0]
    assert found["unchecked"] == []
    assert [w for w in found["warnings"] if w.startswith("Redis AOF is off")]  # still judged, from INFO
    text = check(tmp_path, managed.url)
    assert text.returncode == 0 and "Traceback" not in text.stderr
    assert "read with INFO" in text.stdout and "unknown command 'CONFIG'" in text.stdout


def test_config_and_info_disabled_says_what_it_cannot_check_and_why(tmp_path: Path, locked_down: RedisServer) -> None:
    result = check(tmp_path, locked_down.url, "--json")
    assert result.returncode == 0, result.stderr
    found = one_json(result.stdout)
    assert found["ok"] is True and found["warnings"] == []
    assert found["redis"]["appendonly"] is None and found["redis"]["maxmemory_policy"] is None
    aof, policy = found["unchecked"]
    assert aof.startswith("cannot check that Redis AOF is on: ") and policy.startswith("cannot check Redis maxmemory")
    for line in (aof, policy):
        assert "unknown command 'CONFIG'" in line and "unknown command 'INFO'" in line
    text = check(tmp_path, locked_down.url)
    assert text.returncode == 0 and "Traceback" not in text.stderr
    lines = text.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: cannot check") for line in lines), text.stderr


def test_quiet_prints_nothing_for_a_healthy_fleet(tmp_path: Path, locked_down: RedisServer) -> None:
    # The container health check: warnings and what cannot be checked are not its business.
    result = check(tmp_path, locked_down.url, "--quiet")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("settings", "variable", "says"),
    [
        ({"schedule_cron": "0 25 * * *"}, "SFS_CLEANUP_SCHEDULE_CRON", "hour '25'"),
        ({"schedule_cron": "0 2 * *"}, "SFS_CLEANUP_SCHEDULE_CRON", "want 5 fields"),
        ({"schedule_cron": "0 2 31 2 *"}, "SFS_CLEANUP_SCHEDULE_CRON", "never occurs"),
        ({"schedule_timezone": "Europe/Berln"}, "SFS_CLEANUP_SCHEDULE_TIMEZONE", "did you mean Europe/Berlin?"),
    ],
)
def test_a_bad_schedule_is_an_error_line_naming_the_setting(
    tmp_path: Path, durable: RedisServer, settings: dict[str, str], variable: str, says: str
) -> None:
    result = check(tmp_path, durable.url, **settings)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {variable}: ") and says in line, line
    found = one_json(check(tmp_path, durable.url, "--json", **settings).stdout)
    assert found["ok"] is False
    [error] = found["errors"]
    assert error.startswith(f"{variable}: ") and says in error


def test_unreachable_redis_is_exit_6_and_still_one_json_object(tmp_path: Path) -> None:
    result = check(tmp_path, f"redis://127.0.0.1:{free_port()}/0", "--json")
    assert result.returncode == 6, result.stderr
    found = one_json(result.stdout)
    assert found["ok"] is False and "redis" not in found
    assert found["errors"][0].startswith("Redis is unreachable")
    assert result.stderr.startswith("error: Redis is unreachable")
