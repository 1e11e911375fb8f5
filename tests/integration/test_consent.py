"""No deletion without consent: ``--yes``, the number of tasks typed back on a terminal, or a
schedule opted into.

A deleting command plans first and shows the plan; without consent it stores the plan as a held
run and sends nothing: no job is enqueued and no DELETE reaches the API. (Queue-message triggers
are the consent of the system that sends them; the anomaly guard watches those: see
``test_guard_rails.py``.)
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sandbox.fakeapi.server import FakeApi
from scheduler.schedule import beat_schedule
from tests.support.cluster import Cluster, fake_api
from worker.jobnames import DELETE_QUEUE
from worker.ledger import Audit
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


def _nothing_sent(cluster: Cluster, fake: FakeApi) -> None:
    client = redis.Redis.from_url(cluster.redis_url)
    assert client.llen(DELETE_QUEUE) == 0, "no deletion job was enqueued"
    assert fake.stats()["requests_by_method_status"].get("DELETE", {}) == {}


def _held_runs(cluster: Cluster) -> list[dict[str, str]]:
    return [r for r in Audit(cluster.redis()).list_runs(50) if r.get("status") == "held"]


def test_a_purge_without_consent_stores_its_plan_and_sends_nothing(cluster: Cluster, fake: FakeApi) -> None:
    result = _unconfirmed(cluster, "purge", "--older-than", "0s", "--wait")
    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "add --yes" in line and "nothing was sent" in line
    (held,) = _held_runs(cluster)
    assert f"runs apply {held['run_id']}" in line
    assert held["hold_reason"] == "awaiting_consent" and int(held["planned"]) > 0
    # The plan was shown before the question: the selection, its types, its span and a sample.
    assert "selected" in result.stderr and "sample" in result.stderr and "ended between" in result.stderr
    _nothing_sent(cluster, fake)


def test_a_replay_without_consent_stores_its_plan_and_sends_nothing(cluster: Cluster, fake: FakeApi) -> None:
    cluster.start_worker("w1")
    fake.configure(permanent_error_ratio=1.0)  # every DELETE answers 400: every task fails
    code, failed = cluster.purge_json("--older-than", "0s", "--wait")
    assert code == 3 and failed["outcomes"]["failed"] > 0, failed
    fake.configure(permanent_error_ratio=0.0)
    fake.reset_stats()
    result = _unconfirmed(cluster, "runs", "replay", failed["run_id"])
    assert result.returncode == 2 and "add --yes" in result.stderr, result.stderr
    (held,) = _held_runs(cluster)
    assert held["parent_run"] == failed["run_id"] and int(held["planned"]) == failed["outcomes"]["failed"]
    _nothing_sent(cluster, fake)


def _on_a_terminal(cluster: Cluster, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with a terminal on standard input, the user typing ``answer``."""
    primary, secondary = pty.openpty()
    try:
        os.write(primary, (answer + "\n").encode())
        return _unconfirmed(cluster, *args, stdin=secondary)
    finally:
        os.close(primary)
        os.close(secondary)


def test_on_a_terminal_only_the_number_of_tasks_typed_back_lets_a_purge_go(cluster: Cluster, fake: FakeApi) -> None:
    refused = _on_a_terminal(cluster, "yes", "purge", "--older-than", "0s")
    assert refused.returncode == 2 and "not confirmed" in refused.stderr, refused.stderr
    (held,) = _held_runs(cluster)
    count = held["planned"]
    assert f"Type {count} to go on" in refused.stderr
    _nothing_sent(cluster, fake)

    cluster.start_worker("w1")
    confirmed = _on_a_terminal(cluster, count, "purge", "--older-than", "0s", "--wait", "--json")
    assert confirmed.returncode == 0, confirmed.stderr
    assert sum(fake.stats()["requests_by_method_status"]["DELETE"].values()) == int(count)
    (still,) = _held_runs(cluster)  # the refused plan is still there, unsent, until applied or it expires
    assert still["run_id"] == held["run_id"]


def test_the_nightly_purge_is_off_until_opted_into(redis_url: str) -> None:
    assert "nightly-purge" not in beat_schedule(load_settings(redis_url=redis_url))
    assert "nightly-purge" in beat_schedule(load_settings(redis_url=redis_url, schedule_enabled=True))


def test_a_bounded_wait_gives_up_with_exit_5_and_the_run_goes_on(cluster: Cluster, fake: FakeApi) -> None:
    code, started = cluster.purge_json("--older-than", "0s")  # --yes (a script), no worker yet
    assert code == 0 and started["status"] == "running", started
    waited = cluster.cli("runs", "show", started["run_id"], "--wait", "--timeout", "1", "--json")
    assert waited.returncode == 5 and json.loads(waited.stdout)["status"] == "running", waited.stderr
    cluster.start_worker("w1")
    done = cluster.cli("runs", "show", started["run_id"], "--wait", "--timeout", "120", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "finished", done.stderr
