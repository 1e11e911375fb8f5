"""The nightly schedule: ``celery -A scheduler beat`` (RedBeat), two of them, one run per schedule slot.

Real processes: Redis, the fake API, a control worker (``celery -A scheduler worker -Q
sfs.control``), a deletion worker, and two ``celery -A scheduler beat``. The beats run with
``--max-interval 1`` and ``redbeat_lock_timeout=(int)5`` on the command line (Celery's own
``key=(type)value`` configuration arguments), so a standby takes over within seconds instead of
the production 90 s.

* HA and failover (cron every minute): at a slot only the lock holder sends; a manual message for
  the same slot starts nothing; after ``kill -9`` of the holder the standby takes the lock within
  the lock timeout and sends the next slot; every slot has exactly one run.
* A late start and restarts (a nightly cron, UTC): a beat that was down over the slot
  sends it once when it comes back (only the lock holder of the two), a ``kill -9`` of the holder
  hands the lock over without a second send, and manual messages naming the slot (or any time
  inside it, or none) are no-ops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from sandbox.fakeapi.server import FakeApi
from scheduler.cron import last_slot, slot_key
from tests.support.cluster import Cluster, fake_api, wait_for
from worker.ledger import OVER, Audit

pytestmark = pytest.mark.integration

LOCK_TIMEOUT_S = 5
NIGHTLY_SENT = "Sending due task nightly-purge"
_OVER = {s.value for s in OVER}


@dataclass
class Beat:
    """``celery -A scheduler beat`` as a child process group, logging to a file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, cluster: Cluster, name: str) -> Beat:
        log_path = cluster.tmp / f"{name}.log"
        args = [
            sys.executable, "-m", "celery", "--quiet", "-A", "scheduler", "beat", "-l", "INFO",
            "--max-interval", "1", f"redbeat_lock_timeout=(int){LOCK_TIMEOUT_S}",
        ]  # fmt: skip
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                args, env=cluster.env(), cwd=cluster.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(name, proc, log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sends(self) -> int:
        return self.log().count(NIGHTLY_SENT)

    @property
    def holds_lock(self) -> bool:
        return "beat: Acquired lock" in self.log()

    def wait_lock(self, timeout: float = 60) -> float:
        start = time.monotonic()
        wait_for(lambda: self.holds_lock or self.proc.poll() is not None, timeout=timeout, what=f"{self.name}'s lock")
        assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()[-3000:]}"
        return time.monotonic() - start

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


fake = fake_api(shares=1, tasks_per_share=60, seed=5, deleting_seconds=0, latency_ms=1)


@pytest.fixture
def beats() -> Iterator[list[Beat]]:
    started: list[Beat] = []
    yield started
    for beat in started:
        beat.stop()


def start_cluster(redis_url: str, fake: FakeApi, tmp: Path, cron: str) -> Cluster:
    cluster = Cluster(
        redis_url=redis_url,
        fake=fake,
        tmp=tmp,
        settings={"SFS_CLEANUP_SCHEDULE_CRON": cron, "SFS_CLEANUP_SCHEDULE_ENABLED": "true"},
    )
    cluster.start_worker("control", app="scheduler", queues="sfs.control")
    cluster.start_worker("deleter", concurrency=2)
    return cluster


def schedule_runs(cluster: Cluster) -> list[dict[str, str]]:
    return [r for r in Audit(cluster.redis()).list_runs(200) if r.get("trigger") == "schedule"]


def over(runs: list[dict[str, str]]) -> list[dict[str, str]]:
    return runs if runs and all(r.get("status") in _OVER for r in runs) else []


def duplicates(cluster: Cluster, key: str) -> list[dict[str, str]]:
    return [e for e in Audit(cluster.redis()).events(500, kind="trigger_duplicate") if e.get("key") == key]


def assert_one_run_per_slot(cluster: Cluster, fake: FakeApi) -> list[dict[str, str]]:
    runs = schedule_runs(cluster)
    slots = [r["schedule_slot"] for r in runs]
    assert len(slots) == len(set(slots)), f"a slot ran twice: {sorted(slots)}"
    client = cluster.redis()
    for run in runs:  # the slot's key names the run that holds it
        assert run["idempotency_key"] == f"nightly-{run['schedule_slot'].replace('-', '').replace(':', '')[:13]}Z"
        assert client.get(f"sfs:trigger:{run['idempotency_key']}") == run["run_id"]
    deleted = sum(int(r.get("n:deleted", 0)) for r in runs)
    assert deleted == fake.stats()["deletes_accepted"]
    assert fake.stats()["duplicate_deletes"] == 0
    return runs


def iso(slot: datetime) -> str:
    return slot.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.slow  # waits for two minute boundaries: 70-130 s
def test_two_beats_send_each_slot_once_and_the_standby_takes_over(
    redis_url: str, fake: FakeApi, tmp_path: Path, beats: list[Beat]
) -> None:
    cluster = start_cluster(redis_url, fake, tmp_path, "* * * * *")
    try:
        a = Beat.start(cluster, "beat-a")
        beats.append(a)
        a.wait_lock()
        b = Beat.start(cluster, "beat-b")
        beats.append(b)
        wait_for(lambda: "beat: Starting" in b.log(), timeout=30, what="beat-b to start")

        # The first slot: the next minute boundary. Only the lock holder sends it.
        first = wait_for(lambda: over(schedule_runs(cluster)), timeout=100, interval=0.5, what="the first slot's run")
        assert len(first) == 1
        slot1 = first[0]["schedule_slot"]
        assert a.sends() == 1 and b.sends() == 0 and not b.holds_lock
        assert first[0]["status"] == "finished" and int(first[0]["n:deleted"]) > 0

        # A manual trigger of the same slot starts nothing.
        with Celery(broker=redis_url, set_as_current=False) as other:
            other.send_task("sfs.nightly_purge", kwargs={"slot": slot1}, queue="sfs.control")
        key1 = first[0]["idempotency_key"]
        wait_for(lambda: duplicates(cluster, key1), timeout=60, what="the manual trigger to be refused")

        # kill -9 the lock holder: the standby takes the lock once it expires, and sends the next slot.
        a.kill()
        failover_s = b.wait_lock(timeout=LOCK_TIMEOUT_S + 30)
        assert failover_s <= LOCK_TIMEOUT_S + 5, failover_s
        wait_for(lambda: b.sends() >= 1, timeout=100, interval=0.5, what="beat-b to send the next slot")
        runs = wait_for(
            lambda: (found := over(schedule_runs(cluster))) and len(found) >= 2 and found,
            timeout=60,
            interval=0.5,
            what="the second slot's run",
        )

        runs = assert_one_run_per_slot(cluster, fake)
        assert {r["schedule_slot"] for r in runs} >= {slot1}
        assert len(runs) == 2 and a.sends() + b.sends() >= 2
        later = next(r for r in runs if r["schedule_slot"] != slot1)
        assert later["schedule_slot"] > slot1 and int(later["selected"]) == 0  # all purged by the first
    finally:
        for beat in beats:
            beat.stop()
        cluster.stop()


def test_a_late_start_runs_the_missed_slot_once_and_restarts_do_not_repeat_it(
    redis_url: str, fake: FakeApi, tmp_path: Path, beats: list[Beat]
) -> None:
    # A nightly cron whose slot is 12 hours from now, so no slot can pass while the test runs.
    cron = f"0 {(datetime.now(UTC).hour + 12) % 24} * * *"
    cluster = start_cluster(redis_url, fake, tmp_path, cron)
    try:
        # First start on a fresh Redis: the entry is stored as run now, so nothing is sent at once.
        first = Beat.start(cluster, "beat-first")
        beats.append(first)
        first.wait_lock()
        wait_for(lambda: cluster.redis().exists("sfs:beat:nightly-purge"), timeout=30, what="the schedule entry")
        time.sleep(2)
        assert first.sends() == 0
        first.stop()

        # Beat was down over the last 02:00: its entry last ran before that slot.
        slot = last_slot(cron, "UTC", datetime.now(UTC))
        pretend_last_run(redis_url, cron, slot - timedelta(hours=1))

        # Both replicas come back: the one that takes the lock sends the missed slot at once.
        a, b = Beat.start(cluster, "beat-a"), Beat.start(cluster, "beat-b")
        beats.extend([a, b])
        (run,) = wait_for(lambda: over(schedule_runs(cluster)), timeout=60, interval=0.5, what="the missed slot's run")
        assert run["schedule_slot"] == iso(slot) and run["status"] == "finished"
        holder, standby = (a, b) if a.holds_lock else (b, a)
        assert holder.sends() == 1 and standby.sends() == 0

        # kill -9 the holder and start it again: the standby takes over once the lock expires and
        # sends nothing, since the entry's last run is in Redis.
        holder.kill()
        assert standby.wait_lock(timeout=LOCK_TIMEOUT_S + 30) <= LOCK_TIMEOUT_S + 5
        restarted = Beat.start(cluster, f"{holder.name}-again")
        beats.append(restarted)
        wait_for(lambda: "beat: Starting" in restarted.log(), timeout=30, what="the restarted beat")
        time.sleep(4)  # several ticks of the new holder
        assert standby.sends() == 0 and restarted.sends() == 0

        # Manual messages for the slot, by its time or any time inside it: no second run.
        key = slot_key(slot)
        with Celery(broker=redis_url, set_as_current=False) as other:
            other.send_task("sfs.nightly_purge", kwargs={"slot": iso(slot)}, queue="sfs.control")
            other.send_task("sfs.nightly_purge", kwargs={"slot": iso(slot + timedelta(hours=3))}, queue="sfs.control")
            other.send_task("sfs.nightly_purge", kwargs={}, queue="sfs.control")  # "now" is in the same slot
        wait_for(lambda: len(duplicates(cluster, key)) >= 3, timeout=60, what="three refusals of the slot")

        (only,) = assert_one_run_per_slot(cluster, fake)
        assert only["run_id"] == run["run_id"]
        assert int(only["n:deleted"]) == fake.stats()["deletes_accepted"] > 0
    finally:
        for beat in beats:
            beat.stop()
        cluster.stop()


def pretend_last_run(redis_url: str, cron: str, when: datetime) -> None:
    """Set the nightly entry's last run time through RedBeat itself (beat must be stopped)."""
    from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf

    from worker.celery_app import create_app
    from worker.settings import load_settings

    app: Any = create_app(load_settings(redis_url=redis_url, schedule_cron=cron, schedule_enabled=True))
    ensure_conf(app)
    entry = RedBeatSchedulerEntry.from_key(RedBeatSchedulerEntry.generate_key(app, "nightly-purge"), app=app)
    entry.reschedule(last_run_at=when)


@pytest.mark.parametrize("enabled", [False, True])
def test_beat_says_at_start_whether_the_nightly_purge_is_on(
    redis_url: str, fake: FakeApi, tmp_path: Path, beats: list[Beat], enabled: bool
) -> None:
    settings = {"SFS_CLEANUP_SCHEDULE_ENABLED": str(enabled).lower(), "SFS_CLEANUP_SCHEDULE_CRON": "30 3 * * 1"}
    cluster = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings=settings)
    beat = Beat.start(cluster, "beat")
    beats.append(beat)
    try:
        line = wait_for(
            lambda: next((json.loads(x) for x in beat.log().splitlines() if '"beat schedule"' in x), None),
            timeout=60,
            what="beat's schedule line",
        )
        assert line["nightly_purge"] == ("on" if enabled else "off")
        if enabled:
            assert line["cron"] == "30 3 * * 1" and line["shares"] == ",".join(fake.share_ids)
        else:
            assert "SFS_CLEANUP_SCHEDULE_ENABLED=true" in line["hint"]
        assert beat.log().count('"beat schedule"') == 1
    finally:
        beat.stop()
