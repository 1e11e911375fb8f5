"""Notifications end to end: real runs (CLI, a Celery worker, the fake API), real Redis, a real
webhook receiver on 127.0.0.1 and the fake's SMN publish call.

Each run that needs a human is told once per target, however many reconciler passes run, at
once or again, in threads or in two scheduler worker processes; a failing target is retried by
later passes and then given up, without stopping the other; nothing secret is in what is sent.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from sandbox.fakeapi.server import FakeApi
from sandbox.processes import WorkerProcess
from scheduler.context import Context
from scheduler.jobs import CONTROL_QUEUE, RECONCILE
from scheduler.notify import notify_pending
from scheduler.notify.events import EventKind
from scheduler.notify.outbox import GAVE_UP, Outbox, Released
from tests.support.cluster import Cluster, fake_api, wait_for
from tests.support.environment import aksk_auth, iam_auth
from tests.support.receiver import Receiver
from tests.support.secrets import dump_redis, find_leaks
from worker.celery_app import create_app
from worker.ledger import Audit
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.integration

TOKEN = "notify-TOKEN-s3cr3t-7f1e9a"
HOOK_TOKEN = "hook-TOKEN-s3cr3t-0c4d2b"
SK = "notify-SK-s3cr3t-5a6b7c"
IAM_PASSWORD = "notify-IAM-s3cr3t-9d8e"

fake = fake_api(
    shares=1,
    tasks_per_share=30,
    seed=21,
    deleting_seconds=0,
    tokens=[TOKEN],
    aksk={"AKNOTIFYEXAMPLE00001": SK},
    iam_users=[{"name": "oncall", "password": IAM_PASSWORD, "domain": "acme"}],
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def notify_env(fake: FakeApi, receiver: Receiver, **extra: str) -> dict[str, str]:
    env = {
        "SFS_CLEANUP_NOTIFY_WEBHOOK_URL": f"{receiver.url}?token={HOOK_TOKEN}",
        "SFS_CLEANUP_NOTIFY_SMN_ENDPOINT": fake.url,
        "SFS_CLEANUP_NOTIFY_SMN_TOPIC_URN": f"urn:smn:{fake.config.region}:{fake.project_id}:sfs-oncall",
        "SFS_CLEANUP_NOTIFY_TIMEOUT_S": "5",
        "SFS_CLEANUP_NOTIFY_RETRIES": "0",
        "SFS_CLEANUP_BATCH_SIZE": "10",
        "SFS_CLEANUP_AUDIT_FLUSH_MS": "0",
    }
    return env | extra


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, receiver: Receiver, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(
        redis_url=redis_url,
        fake=fake,
        tmp=tmp_path,
        settings=notify_env(fake, receiver),
        auth={"SFS_CLEANUP_AUTH_TOKEN": TOKEN},
    )
    yield c
    c.stop()


def settings_of(cluster: Cluster, **overrides: Any) -> Settings:
    """The cluster's settings as a scheduler process would read them."""
    env = cluster.env()
    values = {k.removeprefix("SFS_CLEANUP_").lower(): v for k, v in env.items() if k.startswith("SFS_CLEANUP_")}
    return load_settings(**(values | overrides), _env_file=None)


def delivered(receiver: Receiver, fake: FakeApi) -> tuple[list[str], list[str]]:
    """Event IDs the receiver accepted and SMN published, in order."""
    hooks = [r.json()["event_id"] for r in receiver.ok()]
    smn = [m["message"].rsplit("event: ", 1)[1] for m in fake.smn_messages()]
    return hooks, smn


def run_status(cluster: Cluster, run_id: str) -> str:
    return cluster.redis().hget(f"sfs:run:{{{run_id}}}", "status") or ""


def secrets_in(cluster: Cluster, receiver: Receiver, fake: FakeApi, *extra: str) -> list[str]:
    places = {
        "webhook bodies": "\n".join(r.body.decode() for r in receiver.requests),
        "webhook headers": "\n".join(str({k: v for k, v in r.headers.items()}) for r in receiver.requests),
        "smn messages": str(fake.smn_messages()),
        "redis": dump_redis(cluster.redis_url).text,
    }
    places |= {f"text {i}": text for i, text in enumerate(extra)}
    return find_leaks({"token": TOKEN, "hook token": HOOK_TOKEN, "SK": SK, "IAM password": IAM_PASSWORD}, places)


# --- Run ends, each told once per target ---------------------------------------------------------


def test_failed_cancelled_and_aborted_runs_are_each_told_once_to_each_target(
    cluster: Cluster, fake: FakeApi, receiver: Receiver
) -> None:
    # Cancelled: planned with no worker running, cancelled, then drained by a worker (all aborted).
    code, report = cluster.purge_json("--older-than", "0s", "--run-id", "run-cancelled")
    assert code == 0 and report["status"] == "running", report
    cluster.cli("runs", "cancel", "run-cancelled", "--reason", "wrong share", check=True)
    cluster.start_worker("w1")
    wait_for(lambda: run_status(cluster, "run-cancelled") == "cancelled", 60, what="the cancelled run to end")
    # Failed: a third of the tasks are refused for good.
    fake.configure(permanent_error_ratio=0.34)
    code, report = cluster.purge_json("--older-than", "0s", "--wait", "--run-id", "run-failed")
    assert code == 3 and report["outcomes"]["failed"] > 0, report
    # Aborted: the credentials are refused while listing; nothing was sent.
    bad = cluster.cli("purge", "--older-than", "0s", "--run-id", "run-aborted", SFS_CLEANUP_AUTH_TOKEN="not-it")
    assert bad.returncode != 0 and run_status(cluster, "run-aborted") == "aborted", bad.stderr

    # Four reconciler passes at once, each with its own Redis connection, as four schedulers.
    settings = settings_of(cluster)
    start = threading.Barrier(4)
    results: list[dict[str, int]] = []

    def one_pass() -> None:
        ctx = Context(settings)
        start.wait(10)
        results.append(notify_pending(ctx))

    threads = [threading.Thread(target=one_pass) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r["sent"] for r in results) == 6 and sum(r["failed"] for r in results) == 0, results

    expected = {"run_cancelled:run-cancelled", "run_failed:run-failed", "run_aborted:run-aborted"}
    hooks, smn = delivered(receiver, fake)
    assert sorted(hooks) == sorted(expected) and sorted(smn) == sorted(expected)

    # Later passes, one after the other: nothing more.
    ctx = Context(settings)
    assert notify_pending(ctx) == {"sent": 0, "failed": 0, "skipped": 6}
    assert notify_pending(ctx)["sent"] == 0
    assert delivered(receiver, fake) == (hooks, smn) and len(receiver.requests) == 3

    bodies = {r.json()["kind"]: r.json() for r in receiver.ok()}
    failed = bodies["run_failed"]
    assert failed["run_id"] == "run-failed" and failed["status"] == "finished" and failed["trigger"] == "cli"
    assert failed["outcomes"]["failed"] == report_outcome(ctx.audit, "run-failed", "failed") > 0
    assert sum(failed["outcomes"].values()) == failed["selected"]
    assert failed["hint"] == "sfs-cleanup runs show run-failed" and failed["ended_at"].endswith("Z")
    assert bodies["run_cancelled"]["reason"] == "cancelled by operator: wrong share"
    assert bodies["run_cancelled"]["outcomes"]["aborted"] == bodies["run_cancelled"]["selected"] > 0
    assert bodies["run_aborted"]["reason"].startswith("planning failed")
    assert {r.headers["x-sfs-cleanup-event"] for r in receiver.ok()} == expected
    published = fake.smn_messages()
    assert {m["auth"] for m in published} == {"token"}
    assert all(
        m["topic_urn"].endswith(":sfs-oncall") and m["subject"].startswith("sfs-turbo-cleanup:") for m in published
    )

    sent = ctx.audit.events(100, kind="notification_sent")
    assert sorted((e["target"], e["event_id"]) for e in sent) == sorted(
        (t, e) for t in ("webhook", "smn") for e in expected
    )
    assert all(e.get("message_id") for e in sent if e["target"] == "smn")
    assert secrets_in(cluster, receiver, fake) == []


def report_outcome(audit: Audit, run_id: str, outcome: str) -> int:
    return audit.counts(run_id)[outcome]


# --- A failing target: retried by later passes, then given up; the other is told regardless ------------


def test_a_receiver_failing_twice_gets_the_event_once_on_the_third_pass(
    cluster: Cluster, fake: FakeApi, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    cluster.cli("purge", "--older-than", "0s", "--run-id", "run-x", SFS_CLEANUP_AUTH_TOKEN="not-it")
    ctx = Context(settings_of(cluster))  # NOTIFY_RETRIES=0: one attempt per pass

    assert notify_pending(ctx) == {"sent": 1, "failed": 1, "skipped": 0}  # SMN told at once
    assert notify_pending(ctx) == {"sent": 0, "failed": 1, "skipped": 1}
    assert notify_pending(ctx) == {"sent": 1, "failed": 0, "skipped": 1}
    assert notify_pending(ctx) == {"sent": 0, "failed": 0, "skipped": 2}

    assert [r.status for r in receiver.requests] == [500, 500, 200]
    assert delivered(receiver, fake) == (["run_aborted:run-x"], ["run_aborted:run-x"])
    failures = ctx.audit.events(10, kind="notification_failed")
    assert [(e["target"], e["failed_passes"], e["error"]) for e in failures] == [
        ("webhook", "2", "HTTP 500"),
        ("webhook", "1", "HTTP 500"),
    ]


def test_retries_within_one_pass_use_backoff_and_send_once(cluster: Cluster, receiver: Receiver) -> None:
    receiver.fail_first = 2
    cluster.cli("purge", "--older-than", "0s", "--run-id", "run-y", SFS_CLEANUP_AUTH_TOKEN="not-it")
    ctx = Context(settings_of(cluster, notify_retries=2, notify_smn_endpoint=None, notify_smn_topic_urn=None))
    assert notify_pending(ctx) == {"sent": 1, "failed": 0, "skipped": 0}
    assert [r.status for r in receiver.requests] == [500, 500, 200]
    (sent,) = ctx.audit.events(10, kind="notification_sent")
    assert sent["attempts"] == "3"


def test_a_target_that_never_answers_well_is_given_up_and_the_other_still_told(
    cluster: Cluster, fake: FakeApi, receiver: Receiver
) -> None:
    receiver.fail_first = 1000
    cluster.cli("purge", "--older-than", "0s", "--run-id", "run-z", SFS_CLEANUP_AUTH_TOKEN="not-it")
    ctx = Context(settings_of(cluster))
    outbox = Outbox(ctx.redis, ctx.audit.keys, claim_ttl_s=60, keep_s=60, max_passes=3)
    for _ in range(5):
        notify_pending(ctx, max_passes=3)
    assert len(receiver.requests) == 3, "three passes, then given up"
    assert outbox.state("run_aborted:run-z", "webhook") == GAVE_UP
    (gave_up,) = ctx.audit.events(10, kind="notification_gave_up")
    assert gave_up["target"] == "webhook" and gave_up["event_id"] == "run_aborted:run-z"
    assert [m["message"].rsplit("event: ", 1)[1] for m in fake.smn_messages()] == ["run_aborted:run-z"]


def test_an_unreachable_receiver_fails_the_pass_without_raising(cluster: Cluster, fake: FakeApi) -> None:
    cluster.cli("purge", "--older-than", "0s", "--run-id", "run-u", SFS_CLEANUP_AUTH_TOKEN="not-it")
    closed = Receiver().start()
    url = closed.url
    closed.stop()  # nothing listens there any more
    ctx = Context(settings_of(cluster, notify_webhook_url=f"{url}?token={HOOK_TOKEN}", notify_timeout_s=1))
    assert notify_pending(ctx) == {"sent": 1, "failed": 1, "skipped": 0}
    (failure,) = ctx.audit.events(10, kind="notification_failed")
    assert failure["error"].startswith("ConnectError") and failure["http_status"] == "0"
    assert HOOK_TOKEN not in str(failure)


def test_a_slow_target_waits_for_the_next_pass_and_the_other_is_told_meanwhile(
    cluster: Cluster, fake: FakeApi, receiver: Receiver
) -> None:
    receiver.delay_s = 0.5
    for run_id in ("run-s1", "run-s2"):
        cluster.cli("purge", "--older-than", "0s", "--run-id", run_id, SFS_CLEANUP_AUTH_TOKEN="not-it")
    ctx = Context(settings_of(cluster))
    assert notify_pending(ctx, budget_s=0.2) == {"sent": 3, "failed": 0, "skipped": 0}
    assert len(receiver.ok()) == 1 and len(fake.smn_messages()) == 2
    assert notify_pending(ctx, budget_s=0.2) == {"sent": 1, "failed": 0, "skipped": 3}
    hooks, smn = delivered(receiver, fake)
    assert sorted(hooks) == sorted(smn) == ["run_aborted:run-s1", "run_aborted:run-s2"]


# --- Nothing configured ---------------------------------------------------------------------------------


def test_nothing_configured_sends_nothing_and_is_no_error(cluster: Cluster, fake: FakeApi, receiver: Receiver) -> None:
    cluster.cli("purge", "--older-than", "0s", "--run-id", "run-n", SFS_CLEANUP_AUTH_TOKEN="not-it")
    plain = settings_of(cluster, notify_webhook_url=None, notify_smn_endpoint=None, notify_smn_topic_urn=None)
    assert notify_pending(Context(plain)) == {"sent": 0, "failed": 0, "skipped": 0}
    assert receiver.requests == [] and fake.smn_messages() == []
    assert not cluster.redis().keys("sfs:notify:{*")


def test_only_the_chosen_events_are_sent(cluster: Cluster, fake: FakeApi, receiver: Receiver) -> None:
    cluster.cli("purge", "--older-than", "0s", "--run-id", "run-e", SFS_CLEANUP_AUTH_TOKEN="not-it")
    ctx = Context(settings_of(cluster, notify_events="run_failed,run_held"))
    assert notify_pending(ctx) == {"sent": 0, "failed": 0, "skipped": 0}
    assert receiver.requests == [] and fake.smn_messages() == []


# --- The outbox itself ------------------------------------------------------------------------------------


def test_a_claim_is_held_by_one_pass_and_given_back_on_failure(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    audit = Audit(client)
    outbox = Outbox(client, audit.keys, claim_ttl_s=30, keep_s=60, max_passes=2)
    first = outbox.claim("e1", "webhook")
    assert first is not None and outbox.claim("e1", "webhook") is None
    assert 0 < client.ttl(audit.keys.notify("e1", "webhook")) <= 30
    assert outbox.release(first) == (Released.RETRY, 1)
    assert outbox.release(first) == (Released.LAPSED, 1), "a second release of the same claim changes nothing"
    second = outbox.claim("e1", "webhook")
    assert second is not None and outbox.release(second) == (Released.GAVE_UP, 2)
    assert outbox.claim("e1", "webhook") is None and outbox.state("e1", "webhook") == GAVE_UP

    third = outbox.claim("e2", "smn")
    assert third is not None and outbox.sent(third)
    assert outbox.claim("e2", "smn") is None and (outbox.state("e2", "smn") or "").startswith("sent:")
    assert client.ttl(audit.keys.notify("e2", "smn")) > 7 * 86400, "kept longer than any slot can be reported"


def test_a_send_whose_claim_lapsed_still_marks_it_sent(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    outbox = Outbox(client, Audit(client).keys, claim_ttl_s=1, keep_s=60, max_passes=2)
    claim = outbox.claim("e3", "webhook")
    assert claim is not None
    client.delete(Audit(client).keys.notify("e3", "webhook"))  # as if it had expired
    assert outbox.sent(claim) is False  # reported (a second sender may have been at work)...
    assert outbox.claim("e3", "webhook") is None  # ...and yet no later pass sends it again


# --- Held runs and a missed nightly slot, through the real reconciler in two scheduler processes ----------


def test_held_runs_and_a_missed_night_are_told_once_by_two_schedulers(
    cluster: Cluster, fake: FakeApi, receiver: Receiver, tmp_path: Path
) -> None:
    client = cluster.redis()
    # A held run, written the way the ledger writes runs (its status string set as a later release would).
    audit = Audit(redis.Redis.from_url(cluster.redis_url))
    audit.create_run("run-held", {"trigger": "message", "dry_run": False, "requested_by": "ci"})
    held = {"status": "held", "selected": "12", "hold_reason": "anomaly", "held_at": str(time.time())}
    client.hset("sfs:run:{run-held}", mapping=held)
    # The schedule: enabled long ago, its latest slot 40 minutes old (past the catch-up window), unclaimed.
    slot = (datetime.now(UTC) - timedelta(minutes=40)).replace(second=0, microsecond=0)
    client.set("sfs:notify:schedule-on", str(time.time() - 86400))
    env = {
        "SFS_CLEANUP_SCHEDULE_ENABLED": "true",
        "SFS_CLEANUP_SCHEDULE_CRON": f"{slot.minute} {slot.hour} * * *",
        "SFS_CLEANUP_NOTIFY_RETRIES": "1",
    }
    cluster.settings |= env
    schedulers = [
        WorkerProcess(
            name=f"sched{i}",
            env=cluster.env(),
            log_path=tmp_path / f"sched{i}.log",
            app="scheduler",
            queues=CONTROL_QUEUE,
        ).start()
        for i in range(2)
    ]
    cluster.workers.extend(schedulers)
    for s in schedulers:
        s.wait_ready()
    app = create_app(settings_of(cluster))
    for _ in range(6):  # beat sends one a minute; a burst is what redelivery and two beats look like
        app.send_task(RECONCILE, queue=CONTROL_QUEUE)

    slot_iso = slot.isoformat().replace("+00:00", "Z")
    expected = sorted(["run_held:run-held", f"nightly_missed:{slot_iso}"])
    wait_for(lambda: sorted(delivered(receiver, fake)[0]) == expected, 60, what="both events at the webhook")
    wait_for(lambda: client.llen(CONTROL_QUEUE) == 0, 30, what="every reconcile message taken")
    time.sleep(2)  # the last passes finish
    hooks, smn = delivered(receiver, fake)
    assert sorted(hooks) == expected and sorted(smn) == expected
    for s in schedulers:  # both took part: prefetch 1 shares the burst between them
        assert re.search(r"Task sfs\.reconcile\[[^\]]+\] received", s.log()), s.name
    body = next(r.json() for r in receiver.ok() if r.json()["kind"] == EventKind.RUN_HELD)
    assert body["status"] == "held" and body["requested_by"] == "ci" and body["selected"] == 12
    assert body["hold_reason"] == "anomaly"
    missed = next(r.json() for r in receiver.ok() if r.json()["kind"] == EventKind.NIGHTLY_MISSED)
    assert missed["schedule_slot"] == slot_iso and missed["run_id"] is None
    assert secrets_in(cluster, receiver, fake, *(s.log() for s in schedulers)) == []


def test_a_slot_from_before_the_schedule_was_enabled_is_not_missed(
    cluster: Cluster, fake: FakeApi, receiver: Receiver
) -> None:
    from scheduler.service import unclaimed_nightly_slots

    slot = (datetime.now(UTC) - timedelta(minutes=40)).replace(second=0, microsecond=0)
    cron = f"{slot.minute} {slot.hour} * * *"
    ctx = Context(settings_of(cluster, schedule_enabled=True, schedule_cron=cron))
    missed = unclaimed_nightly_slots(ctx, datetime.now(UTC))
    assert missed == [(slot, None)]
    assert notify_pending(ctx, missed_slots=missed)["sent"] == 0, "first seen enabled now: that slot was not its"
    ctx.redis.set("sfs:notify:schedule-on", str(slot.timestamp() - 60))
    assert notify_pending(ctx, missed_slots=missed)["sent"] == 2
    # A run claiming the slot (its trigger key) means it was not missed.
    ctx.redis.set(f"sfs:trigger:nightly-{slot:%Y%m%dT%H%MZ}", "some-run")
    assert unclaimed_nightly_slots(ctx, datetime.now(UTC)) == []
    # Switched off, the schedule forgets when it was on: enabled again, it starts afresh.
    notify_pending(Context(settings_of(cluster, schedule_enabled=False)))
    assert not ctx.redis.exists("sfs:notify:schedule-on")


# --- SMN with each authentication mode --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["aksk", "iam"])
def test_smn_is_published_with_every_authentication_mode(
    cluster: Cluster, fake: FakeApi, receiver: Receiver, mode: str
) -> None:
    cluster.cli("purge", "--older-than", "0s", "--run-id", "run-a", SFS_CLEANUP_AUTH_TOKEN="not-it")
    auth = aksk_auth("AKNOTIFYEXAMPLE00001", SK) if mode == "aksk" else iam_auth(fake, "oncall", IAM_PASSWORD, "acme")
    overrides = {k.removeprefix("SFS_CLEANUP_").lower(): v for k, v in auth.items()}
    ctx = Context(settings_of(cluster, auth_token=None, notify_webhook_url=None, **overrides))
    assert notify_pending(ctx) == {"sent": 1, "failed": 0, "skipped": 0}
    (message,) = fake.smn_messages()
    assert message["auth"] == ("aksk" if mode == "aksk" else "token")
    assert fake.stats()["smn_by_status"] == {"200": 1}
    assert secrets_in(cluster, receiver, fake) == []


def test_smn_refusing_the_credentials_is_a_recorded_failure(cluster: Cluster, fake: FakeApi) -> None:
    cluster.cli("purge", "--older-than", "0s", "--run-id", "run-b", SFS_CLEANUP_AUTH_TOKEN="not-it")
    ctx = Context(
        settings_of(
            cluster, auth_token=None, notify_webhook_url=None, access_key="AKNOTIFYEXAMPLE00001", secret_key="wrong-sk"
        )
    )
    assert notify_pending(ctx) == {"sent": 0, "failed": 1, "skipped": 0}
    (failure,) = ctx.audit.events(10, kind="notification_failed")
    assert failure["target"] == "smn" and failure["http_status"] == "401" and "APIGW" in failure["error"]
    assert fake.smn_messages() == []


# --- The fake's SMN call itself ---------------------------------------------------------------------------


def test_the_fake_smn_checks_credentials_topic_and_body(fake: FakeApi) -> None:
    topic = f"urn:smn:{fake.config.region}:{fake.project_id}:oncall"

    def publish(urn: str, body: object, token: str | None = TOKEN, project: str | None = None) -> httpx.Response:
        path = f"/v2/{project or fake.project_id}/notifications/topics/{quote(urn, safe='')}/publish"
        headers = {"X-Auth-Token": token} if token else {}
        return httpx.post(fake.url + path, json=body, headers=headers, timeout=10)

    ok = publish(topic, {"subject": "s", "message": "m"})
    assert ok.status_code == 200 and set(ok.json()) == {"request_id", "message_id"}
    assert publish(topic, {"message": "m"}, token=None).json()["error_code"] == "APIGW.0301"
    assert publish(topic, {"message": "m"}, token="wrong").status_code == 401
    assert publish("not-a-urn", {"message": "m"}).json()["code"] == "SMN.0005"
    other = f"urn:smn:{fake.config.region}:{'e' * 32}:oncall"
    assert publish(other, {"message": "m"}).status_code == 404
    assert publish(topic, {"message": "m"}, project="e" * 32).json()["code"] == "SMN.0006"
    assert publish(topic, {"subject": "s"}).status_code == 400
    assert publish(topic, {"message": "m", "subject": "x" * 512}).status_code == 400
    fake.reset_stats()
    fake.configure(smn_fail_first=1)
    assert publish(topic, {"message": "m1"}).status_code == 500
    assert publish(topic, {"message": "m2"}).status_code == 200
    assert [m["message"] for m in fake.smn_messages()] == ["m2"]
    stats = fake.stats()
    assert stats["smn_by_status"] == {"500": 1, "200": 1} and stats["requests_total"] == 0, "not an SFS call"
