"""What the CLI prints, against a real Redis: ``--json`` is one JSON document on stdout and nothing
else, logs go to stderr in console form whatever SFS_CLEANUP_LOG_FORMAT says, and ``--version``."""

from __future__ import annotations

import json
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.environment import cli_command, inherited
from worker.ledger import Audit

pytestmark = pytest.mark.integration

TASK = "0a1b2c3d-0000-4000-8000-00000000000a"
SHARE = "5bc8fbbc-bde5-4099-8164-d8399f767c45"


def cli(tmp_path: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it, with the settings' log format at json and every log on."""
    env = inherited() | {
        "SFS_CLEANUP_REDIS_URL": redis_url,
        "SFS_CLEANUP_LOG_FORMAT": "json",  # the workers' format: the CLI must not use it
        "SFS_CLEANUP_LOG_LEVEL": "DEBUG",
    }
    return subprocess.run(
        cli_command(*args), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )


def one_json(result: subprocess.CompletedProcess[str]) -> Any:
    """stdout is one JSON document on one line and nothing else; stderr holds no JSON log line."""
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("\n"), result.stdout
    assert not json_lines(result.stderr), result.stderr
    return json.loads(result.stdout)


def json_lines(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        try:
            json.loads(line)
        except ValueError:
            continue
        found.append(line)
    return found


def stale_planning_run(redis_url: str, run_id: str) -> None:
    """A run whose planner died long ago: the next reconciler pass aborts it, and logs that."""
    client = redis.Redis.from_url(redis_url)
    audit = Audit(client)
    audit.create_run(run_id, {"trigger": "cli", "dry_run": "0"})
    client.hset(audit.keys.run(run_id), "plan_beat", int(time.time()) - 10 * 86400)


def test_logs_go_to_stderr_in_console_form_and_json_output_stays_alone(tmp_path: Path, redis_url: str) -> None:
    stale_planning_run(redis_url, "stale-plan")
    result = cli(tmp_path, redis_url, "reconcile", "--json")
    assert result.returncode == 0, result.stderr
    assert one_json(result) == {}  # no running run to re-send; the stale one was aborted
    # The reconciler logged the abandoned run: on stderr, for a person, not as a JSON line.
    [logged] = [line for line in result.stderr.splitlines() if "run abandoned" in line]
    assert "run_id=stale-plan" in logged and "warning" in logged
    listed = one_json(cli(tmp_path, redis_url, "runs", "list", "--json"))
    assert [(r["run_id"], r["status"]) for r in listed] == [("stale-plan", "aborted")]


def test_reconcile_without_json_prints_a_sentence(tmp_path: Path, redis_url: str) -> None:
    result = cli(tmp_path, redis_url, "reconcile")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0 running run(s) reconciled; 0 batch(es) re-sent\n"


def test_runs_cancel_json(tmp_path: Path, redis_url: str) -> None:
    Audit(redis.Redis.from_url(redis_url)).create_run("to-cancel", {"trigger": "cli", "dry_run": "0"})
    first = one_json(cli(tmp_path, redis_url, "runs", "cancel", "to-cancel", "--reason", "test", "--json"))
    assert first["run_id"] == "to-cancel" and first["stopping"] is True
    again = one_json(cli(tmp_path, redis_url, "runs", "cancel", "to-cancel", "--json"))
    assert again == {"run_id": "to-cancel", "stopping": False, "status": first["status"]}
    text = cli(tmp_path, redis_url, "runs", "cancel", "to-cancel")
    assert text.stdout == f"run to-cancel is not running ({first['status']})\n"
    missing = cli(tmp_path, redis_url, "runs", "cancel", "no-such-run", "--json")
    assert (missing.returncode, missing.stdout) == (2, "")
    assert "error: no run 'no-such-run'" in missing.stderr.splitlines()


def test_protect_add_list_remove_json(tmp_path: Path, redis_url: str) -> None:
    keys = Audit(redis.Redis.from_url(redis_url)).keys
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    added = one_json(cli(tmp_path, redis_url, "protect", "add", "--task", TASK, "--share", SHARE, "--json"))
    assert added == {"tasks": [TASK], "shares": [SHARE], "newly_protected": 2}
    assert client.smembers(keys.protected_tasks) == {TASK} and client.smembers(keys.protected_shares) == {SHARE}
    again = one_json(cli(tmp_path, redis_url, "protect", "add", "--task", TASK, "--json"))
    assert again["newly_protected"] == 0
    assert one_json(cli(tmp_path, redis_url, "protect", "list", "--json")) == {"tasks": [TASK], "shares": [SHARE]}
    removed = one_json(cli(tmp_path, redis_url, "protect", "remove", "--share", SHARE, "--json"))
    assert removed == {"tasks": [], "shares": [SHARE], "removed": 1}
    assert one_json(cli(tmp_path, redis_url, "protect", "list", "--json")) == {"tasks": [TASK], "shares": []}
    text = cli(tmp_path, redis_url, "protect", "remove", "--task", TASK, "--share", SHARE)
    assert text.stdout == "unprotected 1 task(s), 0 share(s)\n"
    assert client.smembers(keys.protected_tasks) == set()


def test_version(tmp_path: Path, redis_url: str) -> None:
    result = cli(tmp_path, redis_url, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"sfs-cleanup {version('sfs-turbo-cleanup')}\n", "")
