"""Notifications without Redis: which run states are events, what the bodies say (and never hold),
the HTTP retries (httpx.MockTransport), the SMN request, and the settings that configure them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from scheduler.notify.delivery import Answer, deliver, retry_policy, send_budget_s
from scheduler.notify.events import Event, EventKind, payload, run_event_kind, text
from scheduler.notify.smn import SmnTarget
from scheduler.notify.webhook import WebhookTarget
from worker.retry import RetryPolicy
from worker.settings import NOTIFY_EVENT_KINDS, Settings, SettingsError, load_settings

PROJECT = "0123456789abcdef0123456789abcdef"
TOPIC = f"urn:smn:cn-north-4:{PROJECT}:sfs-cleanup-oncall"
TOKEN = "TOKEN-s3cr3t-notify-1"  # test values that must never show up
HOOK_TOKEN = "HOOK-s3cr3t-notify-2"
SK = "SK-s3cr3t-notify-3"
HOOK = f"https://hooks.example.com/services/T0/B0?token={HOOK_TOKEN}"
RUN = "20261129-020000-4f9c1a"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "project_id": PROJECT,
        "auth_token": TOKEN,
        "notify_webhook_url": HOOK,
        "notify_smn_endpoint": "https://smn.cn-north-4.example.com/",
        "notify_smn_topic_urn": TOPIC,
        "retry_backoff_base_s": 0.01,
        "retry_backoff_max_s": 0.02,
        "_env_file": None,
    }
    return load_settings(**(values | overrides))


def run_meta(status: str, **fields: str) -> dict[str, str]:
    meta = {
        "run_id": RUN,
        "status": status,
        "trigger": "schedule",
        "schedule_slot": "2026-11-29T02:00:00Z",
        "dry_run": "0",
        "created_at": "1795917600.5",
        "finished_at": "1795918200.25",
        "selected": "40",
        "n:deleted": "30",
        "n:already_gone": "2",
        "n:failed": "8",
    }
    return meta | fields


def event_of(meta: dict[str, str]) -> Event:
    kind = run_event_kind(meta)
    assert kind is not None
    return Event(kind, f"{kind.value}:{RUN}", float(meta["finished_at"]), meta)


# --- Which runs are events ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "kind"),
    [
        (run_meta("finished"), EventKind.RUN_FAILED),
        (run_meta("finished", **{"n:failed": "0"}), None),
        (run_meta("finished", **{"n:failed": ""}), None),
        (run_meta("aborted", reason="failure threshold"), EventKind.RUN_ABORTED),
        (run_meta("cancelled", reason="cancelled by operator"), EventKind.RUN_CANCELLED),
        (run_meta("held"), EventKind.RUN_HELD),
        (run_meta("held", hold_reason="anomaly: 9000 tasks selected"), EventKind.RUN_HELD),
        # A plan its user declined at a terminal pages nobody, held or later expired...
        (run_meta("held", hold_reason="awaiting_consent"), None),
        (run_meta("cancelled", hold_reason="awaiting_consent", reason="approval_timeout"), None),
        # ... but once approved, it is a run like any other.
        (run_meta("cancelled", hold_reason="awaiting_consent", approved_by="ops"), EventKind.RUN_CANCELLED),
        (run_meta("running"), None),
        (run_meta("stopping"), None),
        (run_meta("planning"), None),
        (run_meta("some-status-of-a-later-release"), None),
        ({}, None),
    ],
)
def test_which_run_states_need_a_human(meta: dict[str, str], kind: EventKind | None) -> None:
    assert run_event_kind(meta) is kind


def test_the_settings_and_the_scheduler_name_the_same_event_kinds() -> None:
    assert tuple(k.value for k in EventKind) == NOTIFY_EVENT_KINDS


# --- What is said, and what never is ---------------------------------------------------------------


def test_the_webhook_body_holds_what_the_on_call_needs() -> None:
    body = payload(event_of(run_meta("finished")), settings())
    assert body["kind"] == "run_failed" and body["event_id"] == f"run_failed:{RUN}"
    assert body["run_id"] == RUN and body["status"] == "finished" and body["trigger"] == "schedule"
    assert body["outcomes"]["deleted"] == 30 and body["outcomes"]["failed"] == 8
    assert body["outcomes"]["aborted"] == 0 and body["outcomes"]["already_gone"] == 2
    assert body["selected"] == 40 and body["dry_run"] is False
    assert body["created_at"] == "2026-11-29T02:00:00Z" and body["ended_at"] == "2026-11-29T02:10:00Z"
    assert body["hint"] == f"sfs-cleanup runs show {RUN}"
    assert body["commands"]["replay"] == f"sfs-cleanup runs replay {RUN} --wait"
    assert body["summary"] == f"run {RUN} finished with 8 failed task(s) of 40"
    json.dumps(body)  # plain JSON


def test_a_held_run_says_why_and_how_to_let_it_go() -> None:
    meta = run_meta("held", hold_reason="anomaly: 4000 tasks, 10x the median", held_at="1795918800")
    body = payload(event_of(meta), settings())
    assert body["hold_reason"] == "anomaly: 4000 tasks, 10x the median" and body["status"] == "held"
    assert body["commands"]["approve"] == f"sfs-cleanup runs approve {RUN}" and "replay" not in body["commands"]
    assert body["summary"] == f"run {RUN} is held (anomaly: 4000 tasks, 10x the median): its plan waits for an approval"


def test_a_missed_slot_names_the_slot_and_what_to_look_at() -> None:
    event = Event(EventKind.NIGHTLY_MISSED, "nightly_missed:2026-11-29T02:00:00Z", 0.0, slot="2026-11-29T02:00:00Z")
    body = payload(event, settings())
    assert body["run_id"] is None and body["schedule_slot"] == "2026-11-29T02:00:00Z"
    assert body["outcomes"] is None and body["hint"] == "sfs-cleanup runs list"
    subject, message = text(event, settings())
    assert "2026-11-29T02:00:00Z" in subject and "Nightly run missing" in message
    named = Event(EventKind.NIGHTLY_MISSED, "nightly_missed:weekly:x", 0.0, slot="x", schedule="weekly")
    assert payload(named, settings())["schedule"] == "weekly" and "of schedule weekly" in text(named, settings())[0]


@pytest.mark.parametrize("status", ["finished", "aborted", "cancelled", "held"])
def test_no_secret_reaches_a_body_even_when_a_reason_quotes_one(status: str) -> None:
    # A reason is free text from the ledger; were it ever to quote a credential, it is masked.
    reason = f"refused: X-Auth-Token {TOKEN}, sk={SK}, hook {HOOK}, token {HOOK_TOKEN}"
    meta = run_meta(status, reason=reason, requested_by=TOKEN)
    token_mode, aksk_mode = settings(), settings(auth_token=None, access_key="AKEXAMPLE", secret_key=SK)
    for s, secrets in ((token_mode, (TOKEN, HOOK, HOOK_TOKEN)), (aksk_mode, (SK, HOOK, HOOK_TOKEN))):
        event = event_of(meta)
        subject, message = text(event, s)
        raw = json.dumps(payload(event, s)) + subject + message
        assert RUN in raw and "refused: X-Auth-Token" in raw  # the reason is there, masked
        for secret in secrets:
            assert secret not in raw, secret


def test_smn_text_fits_sms_and_mail() -> None:
    long_reason = "[x] " + "é" * 600
    subject, message = text(event_of(run_meta("aborted", reason=long_reason)), settings())
    assert len(subject.encode()) < 512
    assert "[" not in subject + message and "]" not in subject + message  # SMS refuses brackets
    assert f"next: sfs-cleanup runs show {RUN}" in message and f"event: run_aborted:{RUN}" in message


# --- The HTTP: timeout, retries, and what is not retried ------------------------------------------


def _answers(*statuses: int | Exception) -> tuple[list[int], Any]:
    seen: list[int] = []
    queue = list(statuses)

    def post() -> Answer:
        seen.append(1)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return Answer(item, httpx.Headers(), b'{"code":"X.1","message":"why"}')

    return seen, post


def test_a_failing_receiver_is_retried_until_it_answers() -> None:
    _, post = _answers(500, httpx.ConnectError("refused"), 503, 200)
    waits: list[float] = []
    delivery = deliver(post, RetryPolicy(max_retries=3, base_s=0.5, cap_s=4), budget_s=60, sleep=waits.append)
    assert delivery.ok and delivery.attempts == 4 and delivery.status == 200
    assert len(waits) == 3 and 0.25 <= waits[0] <= 0.5 and 1.0 <= waits[2] <= 2.0  # exponential backoff


def test_retries_are_bounded_and_say_why() -> None:
    seen, post = _answers(500, 500, 500)
    delivery = deliver(post, RetryPolicy(max_retries=2, base_s=0.01, cap_s=0.01), budget_s=60, sleep=lambda _: None)
    assert not delivery.ok and delivery.attempts == 3 and len(seen) == 3
    assert delivery.error == "HTTP 500 X.1: why"


def test_a_client_error_is_not_retried() -> None:
    seen, post = _answers(404, 200)
    delivery = deliver(post, RetryPolicy(max_retries=5, base_s=0.01, cap_s=0.01), budget_s=60, sleep=lambda _: None)
    assert not delivery.ok and delivery.status == 404 and len(seen) == 1


def test_no_retry_starts_past_the_budget() -> None:
    seen, post = _answers(500, 500, 500)
    clock = iter([0.0, 0.0, 100.0])
    delivery = deliver(
        post,
        RetryPolicy(max_retries=5, base_s=1, cap_s=1),
        budget_s=10,
        sleep=lambda _: None,
        clock=lambda: next(clock),
    )
    assert not delivery.ok and len(seen) == 2 and "out of time" in (delivery.error or "")


def test_the_claim_outlasts_the_longest_send() -> None:
    s = settings(notify_timeout_s=5, notify_retries=2)
    assert send_budget_s(s) >= 3 * 3 * 5 + sum(min(retry_policy(s).cap_s, 0.01 * 2**n) for n in range(2))


def test_the_webhook_posts_json_with_the_event_id_and_never_logs_its_url() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    target = WebhookTarget(settings().notify_webhook_url, settings(), transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    delivery = target.send(event_of(run_meta("cancelled")))
    assert delivery.ok and delivery.attempts == 1
    (request,) = requests
    assert request.method == "POST" and str(request.url) == HOOK
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-sfs-cleanup-event"] == f"run_cancelled:{RUN}"
    assert json.loads(request.content)["kind"] == "run_cancelled"
    assert HOOK_TOKEN not in repr(target) and "hooks.example.com" in repr(target)


def test_smn_publishes_to_the_topic_path_with_the_products_credentials() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"request_id": "r-1", "message_id": "m-1"})

    for s, header in (
        (settings(), "x-auth-token"),
        (settings(auth_token=None, access_key="AKEXAMPLE", secret_key=SK), "authorization"),
    ):
        requests.clear()
        delivery = SmnTarget(s, None, transport=httpx.MockTransport(handler)).send(event_of(run_meta("held")))
        assert delivery.ok and (delivery.request_id, delivery.message_id) == ("r-1", "m-1")
        (request,) = requests
        assert request.url.raw_path.decode() == (
            f"/v2/{PROJECT}/notifications/topics/urn%3Asmn%3Acn-north-4%3A{PROJECT}%3Asfs-cleanup-oncall/publish"
        )
        assert request.url.host == "smn.cn-north-4.example.com"
        assert header in request.headers
        body = json.loads(request.content)
        assert set(body) == {"subject", "message"} and RUN in body["subject"]
        assert TOKEN not in request.content.decode() and SK not in request.content.decode()


def test_smn_without_credentials_fails_the_send_instead_of_raising() -> None:
    s = settings(auth_token=None)
    delivery = SmnTarget(s, None, transport=httpx.MockTransport(lambda r: httpx.Response(200))).send(
        event_of(run_meta("held"))
    )
    assert not delivery.ok and delivery.attempts == 0 and "credentials" in (delivery.error or "")


# --- Settings ----------------------------------------------------------------------------------------


def _problems(**overrides: Any) -> list[str]:
    with pytest.raises(SettingsError) as info:
        settings(**overrides)
    return info.value.lines


def test_nothing_configured_is_valid_and_every_event_is_wanted_by_default() -> None:
    s = load_settings(_env_file=None)
    assert s.notify_webhook_url is None and s.notify_smn_topic_urn is None
    assert s.notify_events == list(NOTIFY_EVENT_KINDS)
    assert settings(notify_events="run_failed, nightly_missed").notify_events == ["run_failed", "nightly_missed"]


def test_a_bad_webhook_url_is_refused_without_being_echoed() -> None:
    (line,) = _problems(notify_webhook_url=f"hooks.example.com/x?token={HOOK_TOKEN}")
    assert line.startswith("SFS_CLEANUP_NOTIFY_WEBHOOK_URL: must start with https://")
    assert HOOK_TOKEN not in line
    assert HOOK_TOKEN not in repr(settings()) and HOOK_TOKEN not in settings().model_dump_json()


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        ({"notify_smn_topic_urn": None}, "SFS_CLEANUP_NOTIFY_SMN_TOPIC_URN: SMN needs both"),
        ({"notify_smn_endpoint": None}, "SFS_CLEANUP_NOTIFY_SMN_TOPIC_URN: SMN needs both"),
        ({"notify_smn_topic_urn": "sfs-cleanup-oncall"}, "SFS_CLEANUP_NOTIFY_SMN_TOPIC_URN: must be a topic URN"),
        ({"notify_smn_endpoint": "smn.example.com"}, "SFS_CLEANUP_NOTIFY_SMN_ENDPOINT: must start with https://"),
        (
            {"notify_smn_topic_urn": f"urn:smn:cn-north-4:{'f' * 32}:t"},
            "SFS_CLEANUP_NOTIFY_SMN_TOPIC_URN: the topic's project is not SFS_CLEANUP_PROJECT_ID",
        ),
        ({"project_id": None}, "SFS_CLEANUP_NOTIFY_SMN_TOPIC_URN: publishing to SMN needs SFS_CLEANUP_PROJECT_ID"),
        ({"notify_events": "run_failed,run_exploded"}, "SFS_CLEANUP_NOTIFY_EVENTS: unknown event(s) 'run_exploded'"),
        ({"notify_timeout_s": 0}, "SFS_CLEANUP_NOTIFY_TIMEOUT_S:"),
        ({"notify_retries": 11}, "SFS_CLEANUP_NOTIFY_RETRIES:"),
    ],
)
def test_notification_settings_problems_name_their_variable(overrides: dict[str, Any], start: str) -> None:
    lines = _problems(**overrides)
    assert any(line.startswith(start) for line in lines), lines
