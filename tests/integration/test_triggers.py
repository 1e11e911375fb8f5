"""Queue-message triggers end to end: other systems start purges without importing our code.

Two ways in, both against real worker processes (a control worker, ``celery -A scheduler worker
-Q sfs.control``, and a deletion worker), a real Redis and the fake API:

* a bare Celery app that knows only the broker URL and the task names (``send_task``);
* a message written to Redis with redis-py alone: the Celery protocol 2 envelope and kombu's
  Redis transport format built by hand (:func:`raw_message`), as a system without Celery would.

Valid messages start a run that finishes with the fake's own counts; ``dry_run`` deletes
nothing; an ``idempotency_key`` makes a repeated message a no-op. Invalid messages (wrong
types, unknown fields, path-like IDs, an oversized list, positional arguments, a body that is
not JSON, or not Celery's shape) are refused, recorded as ``trigger_rejected`` with the reason,
delete nothing, and leave the worker running.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from tests.support.cluster import Cluster, wait_for
from worker.ledger import OVER, Audit
from worker.models import parse_time

pytestmark = pytest.mark.integration

CONTROL = "sfs.control"


def raw_message(
    task: str,
    kwargs: dict[str, Any] | None = None,
    *,
    args: list[Any] | None = None,
    body: bytes | None = None,
    queue: str = CONTROL,
    headers: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """(message ID, the JSON to LPUSH onto the queue's list): a Celery task message without Celery.

    The body is the protocol 2 triple ``[args, kwargs, embed]`` as JSON; kombu's Redis transport
    stores the message as a JSON envelope whose body is base64 of those bytes.
    """
    message_id = str(uuid.uuid4())
    if body is None:
        embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        body = json.dumps([args or [], kwargs or {}, embed]).encode()
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": message_id,
            "root_id": message_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "argsrepr": repr(args or []),
            "kwargsrepr": repr(kwargs or {}),
            "origin": "other-system@host",
        }
        | (headers or {}),
        "properties": {
            "correlation_id": message_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return message_id, json.dumps(envelope)


def push(client: redis.Redis, message: str, queue: str = CONTROL) -> None:
    client.lpush(queue, message)


def eligible(fake: FakeApi, shares: list[str] | None = None) -> set[tuple[str, str]]:
    cutoff = datetime.now(UTC) - timedelta(days=7)
    found = set()
    for share_id in shares or fake.share_ids:
        for task in fake.tasks(share_id):
            ended = parse_time(task.get("end_time"))
            if task["status"] in ("SUCCESS", "FAIL") and ended is not None and ended <= cutoff:
                found.add((share_id, task["task_id"]))
    return found


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    config = FakeConfig(shares=2, tasks_per_share=120, seed=21, deleting_seconds=0, latency_ms=1)
    with FakeApi(config).start() as api:
        yield api


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path)
    try:
        c.start_worker("control", app="scheduler", queues=CONTROL)
        c.start_worker("deleter", concurrency=2)
        yield c
    finally:
        c.stop()


@pytest.fixture
def bare(redis_url: str) -> Iterator[Celery]:
    """Another system's Celery: the broker URL and our task names, nothing else."""
    app = Celery(broker=redis_url, set_as_current=False)
    yield app
    app.close()


def runs_of(cluster: Cluster, requested_by: str) -> list[dict[str, str]]:
    return [r for r in Audit(cluster.redis()).list_runs(200) if r.get("requested_by") == requested_by]


def finished_run(cluster: Cluster, requested_by: str, timeout: float = 90) -> dict[str, str]:
    def over() -> dict[str, str] | None:
        found = runs_of(cluster, requested_by)
        return found[0] if found and found[0].get("status") in {s.value for s in OVER} else None

    return wait_for(over, timeout=timeout, interval=0.3, what=f"the run requested by {requested_by!r} to end")  # type: ignore[no-any-return]


def test_a_policy_sent_by_a_bare_celery_app_purges_once_per_idempotency_key(
    cluster: Cluster, fake: FakeApi, bare: Celery
) -> None:
    share = fake.share_ids[0]
    expected = eligible(fake, [share])
    assert len(expected) > 20
    kwargs = {"policy": {"older_than": "7d", "shares": [share]}, "idempotency_key": "ci:4711", "requested_by": "ci"}

    first = bare.send_task("sfs.start_purge", kwargs=kwargs, queue=CONTROL)
    run = finished_run(cluster, "ci")
    second = bare.send_task("sfs.start_purge", kwargs=kwargs, queue=CONTROL)  # the same message again
    audit = Audit(cluster.redis())
    duplicate = wait_for(
        lambda: [e for e in audit.events(kind="trigger_duplicate") if e.get("key") == "ci:4711"],
        timeout=60,
        what="the second message to be processed",
    )

    assert first.id != second.id
    assert len(runs_of(cluster, "ci")) == 1
    assert duplicate[0]["run_id"] == run["run_id"]
    stats = fake.stats()
    assert run["status"] == "finished" and run["trigger"] == "message"
    assert int(run["selected"]) == len(expected)
    assert int(run.get("n:deleted", 0)) == stats["deletes_accepted"] == len(expected)
    assert {(d["share_id"], d["task_id"]) for d in fake.deleted()} == expected
    assert not audit.events(kind="trigger_rejected")


def test_a_raw_redis_message_honours_dry_run(cluster: Cluster, fake: FakeApi) -> None:
    client = cluster.redis()
    _, message = raw_message("sfs.start_purge", {"dry_run": True, "requested_by": "raw-dry"})
    push(client, message)

    run = finished_run(cluster, "raw-dry")

    assert run["dry_run"] == "1" and run["status"] == "finished"
    assert int(run["n:would_delete"]) == int(run["selected"]) == len(eligible(fake))
    assert fake.stats()["requests_by_method_status"].get("DELETE", {}) == {}


def test_a_raw_redis_message_deletes_an_explicit_list(cluster: Cluster, fake: FakeApi) -> None:
    chosen = sorted(eligible(fake))[:5]
    running = next(
        (s, t["task_id"]) for s in fake.share_ids for t in fake.tasks(s) if t["status"] == "DOING"
    )  # shown first and skipped: only finished tasks are deleted
    tasks = [{"share_id": s, "task_id": t} for s, t in [*chosen, running]]
    _, message = raw_message(
        "sfs.delete_tasks",
        {"tasks": tasks, "requested_by": "raw-list", "reason": "ticket 42", "idempotency_key": "t42"},
    )
    client = cluster.redis()
    push(client, message)
    run = finished_run(cluster, "raw-list")
    push(
        client,
        raw_message("sfs.delete_tasks", {"tasks": tasks, "requested_by": "raw-list", "idempotency_key": "t42"})[1],
    )
    wait_for(lambda: Audit(client).events(kind="trigger_duplicate"), timeout=60, what="the repeat to be refused")

    assert run["status"] == "finished" and run["request_reason"] == "ticket 42"
    assert int(run["n:deleted"]) == fake.stats()["deletes_accepted"] == 5
    assert int(run["n:skipped"]) == 1
    assert {(d["share_id"], d["task_id"]) for d in fake.deleted()} == set(chosen)
    assert len(runs_of(cluster, "raw-list")) == 1


def test_invalid_messages_are_refused_recorded_and_delete_nothing(
    cluster: Cluster, fake: FakeApi, bare: Celery
) -> None:
    client = cluster.redis()
    share = fake.share_ids[0]
    too_many = [{"share_id": share, "task_id": f"task-{n}"} for n in range(10_001)]
    expected: dict[str, str] = {}  # message ID -> a fragment of the recorded error

    def send(name: str, fragment: str, **options: Any) -> None:
        expected[bare.send_task(name, queue=CONTROL, **options).id] = fragment

    def send_raw(fragment: str, task: str = "sfs.start_purge", **parts: Any) -> None:
        message_id, message = raw_message(task, **parts)
        push(client, message)
        expected[message_id] = fragment

    # A bare Celery app (kwargs as JSON, by task name):
    send("sfs.start_purge", "dry_run: Input should be a valid boolean", kwargs={"dry_run": "yes"})
    send("sfs.start_purge", "policy.older: unknown field", kwargs={"policy": {"older": "7d"}})
    send(
        "sfs.start_purge",
        "policy.statuses.0: Input should be 'SUCCESS' or 'FAIL'",
        kwargs={"policy": {"statuses": ["DOING"]}},
    )
    send("sfs.start_purge", "policy.shares.0: ID contains a path character", kwargs={"policy": {"shares": ["../x"]}})
    send("sfs.start_purge", "positional arguments are not accepted", args=[True])
    send(
        "sfs.delete_tasks",
        "tasks.0.share_id: ID contains a path character",
        kwargs={"tasks": [{"share_id": "../x", "task_id": "t1"}]},
    )
    send("sfs.delete_tasks", "tasks: List should have at most 10000 items", kwargs={"tasks": too_many})
    send(
        "sfs.delete_tasks",
        "tasks.0.task_id: Input should be a valid string",
        kwargs={"tasks": [{"share_id": share, "task_id": 7}]},
    )
    send("sfs.nightly_purge", "slot: not an ISO 8601 time", kwargs={"slot": "yesterday"})
    send("sfs.start_purge_now", "unknown task name 'sfs.start_purge_now'", kwargs={})
    # Raw messages written to Redis by hand:
    send_raw("body is not valid application/json", body=b'[[], {"dry_run": tru')
    send_raw("body must be a JSON array [args, kwargs, embed]", body=json.dumps({"policy": {}}).encode())
    send_raw("body[1] (keyword arguments) must be an object", body=b'[[], ["dry_run"], {}]')
    send_raw("tasks: Input should be a valid list", task="sfs.delete_tasks", kwargs={"tasks": "all"})
    send_raw(
        "delayed triggers (eta/countdown) are not accepted", kwargs={}, headers={"eta": "2030-01-01T00:00:00+00:00"}
    )
    # ... and then a valid message: the worker is still there and in order, so it is the last one handled.
    _, sentinel = raw_message("sfs.start_purge", {"dry_run": True, "requested_by": "after-the-bad-ones"})
    push(client, sentinel)

    finished_run(cluster, "after-the-bad-ones")
    audit = Audit(client)
    rejected = wait_for(
        lambda: (
            (found := {e["message_id"]: e for e in audit.events(200, kind="trigger_rejected")})
            and len(found) >= len(expected)
            and found
        ),
        timeout=60,
        what="every refusal to be recorded",
    )

    assert set(rejected) == set(expected)
    for message_id, fragment in expected.items():
        assert fragment in rejected[message_id]["error"], (fragment, rejected[message_id])
    assert [r["requested_by"] for r in audit.list_runs(50)] == ["after-the-bad-ones"]  # no other run
    stats = fake.stats()
    assert stats["deletes_accepted"] == 0
    assert stats["requests_by_method_status"].get("DELETE", {}) == {}
    assert all(w.running for w in cluster.workers)
    # Refused messages are acknowledged and gone, not redelivered in a loop.
    wait_for(lambda: client.llen(CONTROL) == 0 and client.hlen("unacked") == 0, timeout=30, what="an empty queue")
