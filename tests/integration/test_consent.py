"""No deletion without consent: ``--yes``, the word typed back on a terminal, or a schedule opted into.

A deleting command without consent plans nothing, writes nothing and sends nothing to the API.
(Queue-message triggers are the consent of the system that sends them.)
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sandbox.fakeapi.server import FakeApi
from tests.support.cluster import Cluster, fake_api
from worker.celery_app import create_app
from worker.settings import load_settings

pytestmark = pytest.mark.integration

fake = fake_api(shares=1, tasks_per_share=40, seed=12, deleting_seconds=0)


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path)
    yield c
    c.stop()


def _unconfirmed(
    cluster: Cluster, *args: str, stdin: int | None = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    """The CLI as a script without ``--yes`` (standard input is no terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args],
        env=cluster.env(),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _nothing_happened(cluster: Cluster, fake: FakeApi, runs_before: int) -> None:
    client = redis.Redis.from_url(cluster.redis_url)
    assert client.zcard("sfs:runs") == runs_before, "no run was planned"
    assert fake.stats()["requests_by_method_status"].get("DELETE", {}) == {}


def test_a_purge_without_consent_plans_and_sends_nothing(cluster: Cluster, fake: FakeApi) -> None:
    result = _unconfirmed(cluster, "purge", "--older-than", "0s", "--wait")
    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "--yes" in line and "nothing was planned or sent" in line
    _nothing_happened(cluster, fake, 0)
    assert fake.stats()["requests_total"] == 0, "not even the listing ran"


def test_a_replay_without_consent_plans_and_sends_nothing(cluster: Cluster, fake: FakeApi) -> None:
    code, dry = cluster.purge_json("--dry-run", "--older-than", "0s")
    assert code == 0
    result = _unconfirmed(cluster, "runs", "replay", dry["run_id"])
    assert result.returncode == 2 and "--yes" in result.stderr, result.stderr
    _nothing_happened(cluster, fake, 1)


def _on_a_terminal(cluster: Cluster, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with a terminal on standard input, the user typing ``answer``."""
    primary, secondary = pty.openpty()
    try:
        os.write(primary, (answer + "\n").encode())
        return _unconfirmed(cluster, *args, stdin=secondary)
    finally:
        os.close(primary)
        os.close(secondary)


def test_on_a_terminal_only_the_typed_word_lets_a_purge_go(cluster: Cluster, fake: FakeApi) -> None:
    refused = _on_a_terminal(cluster, "yes", "purge", "--older-than", "0s")
    assert refused.returncode == 2 and "not confirmed" in refused.stderr, refused.stderr
    _nothing_happened(cluster, fake, 0)

    cluster.start_worker("w1")
    confirmed = _on_a_terminal(cluster, "delete", "purge", "--older-than", "0s", "--wait", "--json")
    assert confirmed.returncode == 0, confirmed.stderr
    assert sum(fake.stats()["requests_by_method_status"]["DELETE"].values()) > 0


def test_the_nightly_purge_is_off_until_opted_into(redis_url: str) -> None:
    assert "nightly-purge" not in create_app(load_settings(redis_url=redis_url)).conf.beat_schedule
    opted = create_app(load_settings(redis_url=redis_url, schedule_enabled=True))
    assert "nightly-purge" in opted.conf.beat_schedule
