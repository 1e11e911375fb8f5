"""Redis behind Sentinel: clients follow a failover, ledger writes wait for a replica (WAIT),
and a run of 5,000 deletions survives SIGKILL of its primary mid-run with nothing lost.

Real processes only: ``redis-server`` primary and replicas, three ``redis-server --sentinel``,
the fake API on 127.0.0.1, Celery workers and the CLI (:mod:`tests.support.sentinel`).
Figures are printed with ``[figure]`` (``pytest -s``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sandbox.fakeapi.server import FakeApi
from tests.support import fault_runs
from tests.support.cluster import Cluster, fake_api
from tests.support.faults import FAST, RunView, background_cli, export_rows, figure, running
from tests.support.sentinel import SentinelGroup
from worker.ledger.durable import Durability, NotReplicatedError, confirm
from worker.purge.state import STALE_GATE_S
from worker.redisconn import connect
from worker.settings import load_settings

pytestmark = pytest.mark.integration

RUN_SIZE = 5000


@pytest.fixture
def group(request: pytest.FixtureRequest) -> Iterator[SentinelGroup]:
    replicas = getattr(request, "param", 1)
    with SentinelGroup(replicas=replicas) as g:
        yield g


def _settings(group: SentinelGroup, **extra: str):  # type: ignore[no-untyped-def]
    env = group.settings(**extra)
    return load_settings(
        redis_url=group.primary.url, **{k.removeprefix("SFS_CLEANUP_").lower(): v for k, v in env.items()}
    )


def test_a_client_follows_the_failover_on_its_own(group: SentinelGroup) -> None:
    client = connect(_settings(group))
    client.set("before", "1")
    SentinelGroup.wait_replicas_online(group.primary.port, 1)
    time.sleep(0.2)  # the replica holds "before" (asynchronous replication)
    old = group.primary.port
    group.primary.stop(kill=True)
    promoted = group.wait_failover(old)
    deadline = time.monotonic() + 30
    while True:  # the first calls after the kill fail: redis-py's own retries may not span the election
        try:
            client.set("after", "2")
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the client never reached the promoted replica"
            time.sleep(0.2)
    on_promoted = redis.Redis(host="127.0.0.1", port=promoted.port, decode_responses=True)
    assert on_promoted.get("before") == "1"
    assert on_promoted.get("after") == "2"


def test_a_write_counts_only_once_a_replica_holds_it(group: SentinelGroup) -> None:
    """WAIT through :func:`confirm`: a stalled replica makes it refuse in the timeout, then accept."""
    client = connect(_settings(group))
    wanted = Durability(min_replicas=1, timeout_ms=300)
    client.set("k", "1")
    confirm(client, wanted)  # the replica is live
    replica = group.replica_servers[0]
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        client.set("k", "2")
        started = time.monotonic()
        with pytest.raises(NotReplicatedError, match="0 of 1 required replicas acknowledged within 300 ms"):
            confirm(client, wanted)
        assert 0.25 < time.monotonic() - started < 3
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    confirm(client, wanted)
    with pytest.raises(NotReplicatedError):  # asking for more replicas than there are
        confirm(client, Durability(min_replicas=2, timeout_ms=100))


# --- a run through a failover --------------------------------------------------------------------
fake = fake_api(shares=4, tasks_per_share=2000, seed=43, latency_ms=20, deleting_seconds=0, record_request_ids=True)


@pytest.fixture
def redis_url(group: SentinelGroup) -> str:
    """Only lends the database number: with Sentinels the processes ask them for the primary."""
    return group.primary.url


@pytest.fixture
def cluster(group: SentinelGroup, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    settings = dict(FAST) | group.settings(SFS_CLEANUP_REDIS_MIN_REPLICAS="1", SFS_CLEANUP_REDIS_WAIT_TIMEOUT_MS="500")
    settings["SFS_CLEANUP_RATE_LIMIT"] = "400"  # long enough a run to kill its primary in the middle
    c = Cluster(redis_url=group.primary.url, fake=fake, tmp=tmp_path, settings=settings)
    yield c
    c.stop()


@pytest.mark.slow
@pytest.mark.parametrize("group", [2], indirect=True)  # a replica left to WAIT for after the failover
def test_primary_killed_mid_run_the_run_finishes_on_the_promoted_replica(
    group: SentinelGroup, cluster: Cluster, fake: FakeApi
) -> None:
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    old = group.primary.port
    reader = RunView(group.replica_servers[0].url)  # a replica reads the same ledger
    with running(background_cli(cluster, "purge", "purge", "--max-deletions", str(RUN_SIZE), "--wait", "--json")) as bg:
        run_id = reader.wait_run()
        reader.wait_finals(run_id, RUN_SIZE * 3 // 10, timeout=120)
        killed_at = time.time()
        group.primary.stop(kill=True)  # SIGKILL: no shutdown, no last replication
        promoted = group.wait_failover(old)
        promoted_after = time.time() - killed_at
        code = bg.wait(240)
        report = bg.report()
        stderr = bg.err.read_text(errors="replace")
    reader.close()
    view = RunView(promoted.url)
    try:
        arrivals = sorted((d["arrived"] or d["at"]) - killed_at for d in fake.deleted())
        # A DELETE whose gate passed on the old primary may still arrive just after the kill; one
        # gated longer than STALE_GATE_S before it leaves asks the gate again. Later: a new gate.
        in_flight_late = [t for t in arrivals if 0 < t <= STALE_GATE_S]
        after = [t for t in arrivals if t > STALE_GATE_S]
        recovery = after[0] if after else None
        figure("DELETEs gated before the kill, arriving after it", len(in_flight_late))
        figure("primary SIGKILLed -> Sentinels report the promoted replica (s)", round(promoted_after, 2))
        figure("primary SIGKILLed -> first DELETE gated after it (s)", None if recovery is None else round(recovery, 2))
        assert code == 0, f"{report}\n{stderr[-3000:]}"
        counted = fault_runs.assert_finished_despite_crash(cluster, fake, view, report, RUN_SIZE)
        figure("outcomes", dict(counted))
        # Every DELETE the fake accepted is in the audit with the request ID it answered with.
        rows = {r["task_id"]: r for r in export_rows(cluster, run_id)}
        accepted = [a for a in fake.answered() if a["method"] == "DELETE" and 200 <= int(a["status"]) < 300]
        missing = [a for a in accepted if a["rid"] not in rows[a["task_id"]]["request_ids"]]
        figure("lost records (accepted DELETEs without their request ID in the audit)", len(missing))
        assert not missing, missing[:5]
        # The workers kept asking a replica for each record on the promoted primary too (WAIT).
        waits = redis.Redis(host="127.0.0.1", port=promoted.port).info("commandstats").get("cmdstat_wait", {})
        assert int(waits.get("calls", 0)) > 0, waits
        # Duplicates are bounded by the DELETEs in flight when the primary died: 2 workers x 2 jobs x 8.
        in_flight = 2 * 2 * int(FAST["SFS_CLEANUP_BATCH_CONCURRENCY"])
        assert len(fake.stats()["duplicates"]) <= in_flight
    finally:
        view.close()
