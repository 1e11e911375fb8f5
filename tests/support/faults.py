"""Shared helpers of the fault tests: short timings, a background CLI, progress polling, and the
checks every fault test ends with (one outcome per task; every duplicate DELETE explained).

The figures each test measures are printed with :func:`figure`, so ``pytest -s`` shows them.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from sandbox.fakeapi.server import FakeApi
from tests.support.cluster import Cluster, wait_for
from tests.support.environment import cli_command
from worker.ledger import Audit, FinalOutcome, Outcome

#: Short timings for the fault tests (the settings validator's floors: job limit >= 30 s, the
#: visibility timeout >= job limit + 60 s, reconcile_after >= lease, rate wait < job limit).
FAST: dict[str, str] = {
    "SFS_CLEANUP_JOB_TIME_LIMIT_S": "60",
    "SFS_CLEANUP_VISIBILITY_TIMEOUT_S": "120",
    "SFS_CLEANUP_RESTORE_INTERVAL_S": "1",
    "SFS_CLEANUP_LEASE_S": "5",
    "SFS_CLEANUP_RECONCILE_AFTER_S": "10",
    "SFS_CLEANUP_RATE_WAIT_MAX_S": "20",
    "SFS_CLEANUP_BATCH_CONCURRENCY": "8",
    "SFS_CLEANUP_LOG_LEVEL": "INFO",
}


#: Attempts and outcomes store their times rounded to the millisecond (``Attempt.to_json``).
AUDIT_TIME_RESOLUTION_S = 0.001


def figure(name: str, value: Any) -> None:
    """Print one measured figure (``pytest -s`` shows it; the report lists them)."""
    print(f"[figure] {name}: {value}", flush=True)


# --- a run, seen from Redis -------------------------------------------------------------------
@dataclass
class RunView:
    """Reads a run's ledger straight from Redis (what the workers wrote, no CLI in between)."""

    url: str
    prefix: str = "sfs"
    client: redis.Redis = field(init=False)
    audit: Audit = field(init=False)

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=10)
        self.audit = Audit(self.client, prefix=self.prefix)

    def close(self) -> None:
        self.client.close()

    def latest_run(self) -> str | None:
        ids = self.client.zrevrange(self.audit.keys.runs, 0, 0)
        return ids[0].decode() if ids else None

    def wait_run(self, timeout: float = 60) -> str:
        run_id: str = wait_for(self.latest_run, timeout, what="a run to be created")
        return run_id

    def meta(self, run_id: str) -> dict[str, str]:
        return self.audit.run(run_id)

    def finals(self, run_id: str) -> int:
        return int(self.meta(run_id).get("finals", 0))

    def status(self, run_id: str) -> str:
        return self.meta(run_id).get("status", "")

    def finals_safe(self, run_id: str) -> int | None:
        """``finals``, or None while Redis does not answer (the restart test polls through it)."""
        try:
            return self.finals(run_id)
        except (redis.ConnectionError, redis.TimeoutError):
            return None

    def leases(self, run_id: str) -> dict[int, str]:
        """Batch number -> holder of every live lease of the run."""
        found = {}
        for key in self.client.scan_iter(match=f"{self.audit.keys.run(run_id)}:lease:*", count=1000):
            holder = self.client.get(key)
            if holder is not None:
                found[int(key.decode().rsplit(":", 1)[1])] = holder.decode()
        return found

    def queued_job_ids(self, queue: str = "sfs.delete") -> set[str]:
        """IDs of the job messages waiting in the broker's queue (kombu keeps a list per queue)."""
        ids = set()
        for raw in self.client.lrange(queue, 0, -1):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                ids.add(json.loads(raw)["headers"]["id"])
        return ids

    def finals_by_task(self, run_id: str) -> dict[str, tuple[str, FinalOutcome | None, int]]:
        """task ID -> (share ID, final outcome or None, number of recorded attempts)."""
        out: dict[str, tuple[str, FinalOutcome | None, int]] = {}
        for batch in self.audit.iter_batches(run_id):
            for record in self.audit.task_records(batch):
                assert record.task_id not in out, f"task {record.task_id} planned twice"
                out[record.task_id] = (record.share_id, record.final, len(record.attempts))
        return out

    def unanswered_deletes(self, run_id: str) -> set[str]:
        """Tasks with a DELETE recorded as sent (write-ahead) whose answer never came."""
        return {
            record.task_id
            for batch in self.audit.iter_batches(run_id)
            for record in self.audit.task_records(batch)
            if any(a.op == "delete" and a.pending for a in record.attempts)
        }

    def wait_finals(self, run_id: str, at_least: int, timeout: float = 120) -> float:
        """Poll until the run has ``at_least`` final outcomes; returns the monotonic time."""
        wait_for(lambda: (self.finals_safe(run_id) or 0) >= at_least, timeout, 0.05, f"{at_least} outcomes")
        return time.monotonic()

    def wait_over(self, run_id: str, timeout: float = 180) -> float:
        wait_for(lambda: self.status(run_id) in ("finished", "aborted", "cancelled"), timeout, 0.1, "the run to end")
        return time.monotonic()


# --- the CLI in the background ----------------------------------------------------------------
@dataclass
class Background:
    """``sfs-cleanup ...`` as a child process (e.g. ``purge --wait --json``), output to files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def report(self) -> dict[str, Any]:
        text = self.out.read_text(errors="replace").strip()
        try:
            report: dict[str, Any] = json.loads(text.splitlines()[-1])
        except (IndexError, ValueError) as exc:
            raise AssertionError(f"no JSON report:\n{text}\n{self.err.read_text(errors='replace')}") from exc
        return report

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def background_cli(cluster: Cluster, name: str, *args: str, **env: str) -> Background:
    out, err = cluster.tmp / f"{name}.out", cluster.tmp / f"{name}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(cli_command(*args), env=cluster.env(**env), stdout=o, stderr=e)
    return Background(proc, out, err)


@contextmanager
def running(bg: Background) -> Iterator[Background]:
    try:
        yield bg
    finally:
        bg.stop()


def cli_json(cluster: Cluster, *args: str, **env: str) -> Any:
    result = cluster.cli(*args, check=True, **env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def export_rows(cluster: Cluster, run_id: str) -> list[dict[str, Any]]:
    """The run's completion report (``audit export --format jsonl``), one dict per row."""
    result = cluster.cli("audit", "export", run_id, "--format", "jsonl", check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# --- the checks every fault test ends with ------------------------------------------------------
def assert_one_outcome_per_task(report: dict[str, Any], rows: list[dict[str, Any]]) -> Counter[str]:
    """Nothing lost, nothing counted twice: the counters add up and every task has one row."""
    outcomes = report["outcomes"]
    assert report["pending"] == 0, report
    assert sum(outcomes.values()) == report["selected"], report
    assert len(rows) == report["selected"], (len(rows), report["selected"])
    counted = Counter(r["outcome"] for r in rows)
    assert "pending" not in counted, counted
    assert {k: v for k, v in outcomes.items() if v} == dict(counted), (outcomes, counted)
    planned = [(r["share_id"], r["task_id"]) for r in rows if r["outcome"] != "rejected"]
    assert len(planned) == len(set(planned)), "a task has two rows"
    return counted


@dataclass
class Duplicates:
    total: int = 0
    already_gone: int = 0  # the redelivered DELETE found the task gone: its outcome was not yet written
    recorded_later: int = 0  # the audit's `deleted` came after the duplicate request
    late_arrival: int = 0  # a DELETE of a killed sender, recorded as sent, reached the fake late


def explain_duplicates(fake: FakeApi, view: RunView, run_ids: list[str]) -> Duplicates:
    """Every duplicate DELETE the fake saw must be one whose task had no outcome in the audit yet.

    A DELETE sent after the audit recorded the task ``deleted`` would be a bug (the ledger's
    skip-what-is-done check failed). Allowed: the task ended ``already_gone`` (the first DELETE's
    outcome was lost with a killed worker, so the second one found it gone), its ``deleted``
    record is later than the duplicate request, or the audit holds a write-ahead record of a
    DELETE that never got its answer (its sender was killed with the request already on the wire:
    the fake, busy, may read that request after the next delivery's DELETE was answered; it was
    *sent* before the outcome, and the audit says so).
    """
    finals: dict[str, FinalOutcome | None] = {}
    unanswered: set[str] = set()
    for run_id in run_ids:
        for task_id, (_share, final, _n) in view.finals_by_task(run_id).items():
            if final is not None and finals.get(task_id) is None:
                finals[task_id] = final
        unanswered |= view.unanswered_deletes(run_id)
    result = Duplicates()
    for dup in fake.stats()["duplicates"]:
        result.total += 1
        final = finals.get(dup["task_id"])
        assert final is not None, f"duplicate DELETE of {dup['task_id']}, which has no outcome"
        if final.outcome is Outcome.ALREADY_GONE:
            result.already_gone += 1
        # The audit keeps times to the millisecond (rounded): an outcome recorded within the same
        # millisecond as the duplicate's arrival may read as earlier by less than that.
        elif final.outcome is Outcome.DELETED and final.at + AUDIT_TIME_RESOLUTION_S > dup["at"]:
            result.recorded_later += 1
        elif final.outcome is Outcome.DELETED and dup["task_id"] in unanswered:
            result.late_arrival += 1
        else:
            raise AssertionError(
                f"DELETE of {dup['task_id']} at {dup['at']:.3f} after the audit recorded "
                f"{final.outcome.value} at {final.at:.3f}"
            )
    return result


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    value = fn()
    return value, time.monotonic() - start
