"""Queue-message triggers: the schemas, the envelope check, schedule slots and idempotency keys."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from kombu.exceptions import DecodeError
from pydantic import ValidationError

from scheduler.context import Context
from scheduler.cron import last_slot, nightly_slot, slot_key
from scheduler.service import _start_claimed
from scheduler.triggers import (
    MAX_EXPLICIT_TASKS,
    DeleteTasks,
    NightlyPurge,
    StartPurge,
    explain_error,
    schemas,
)
from worker.envelope import envelope_problem
from worker.settings import load_settings


def refusal(model: type[Any], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return explain_error(caught.value)


# --- sfs.start_purge -------------------------------------------------------------------------------


def test_a_full_start_purge_message_is_accepted() -> None:
    trigger = StartPurge.model_validate(
        {
            "policy": {
                "older_than": "14d",
                "statuses": ["SUCCESS", "FAIL"],
                "types": ["import", "export"],
                "shares": ["77ba6f4b-6365-4895-8dda-bc7142af4dde"],
                "max_deletions": 500,
                "protected_task_ids": ["keep-me-1"],
                "protected_share_ids": [],
                "name": "weekly",
            },
            "dry_run": True,
            "idempotency_key": "ci-pipeline:4711",
            "requested_by": "ci",
        }
    )
    assert trigger.dry_run and trigger.policy.max_deletions == 500
    assert trigger.policy.model_dump(exclude_none=True)["older_than"] == "14d"
    assert StartPurge.model_validate({}) == StartPurge()  # every field is optional


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"dry_run": "yes"}, "dry_run: Input should be a valid boolean"),
        ({"dry_run": 1}, "dry_run: Input should be a valid boolean"),
        ({"policy": {"max_deletions": "100"}}, "policy.max_deletions: Input should be a valid integer"),
        ({"policy": {"max_deletions": True}}, "policy.max_deletions: Input should be a valid integer"),
        ({"policy": {"max_deletions": -1}}, "policy.max_deletions: Input should be greater than or equal to 0"),
        ({"policy": {"statuses": ["DOING"]}}, "policy.statuses.0: Input should be 'SUCCESS' or 'FAIL'"),
        ({"policy": {"statuses": []}}, "policy.statuses: List should have at least 1 item"),
        ({"policy": {"types": ["backup"]}}, "policy.types.0: Input should be 'import'"),
        ({"policy": {"older_than": "soon"}}, "policy.older_than: 'soon' is not a duration like 7d"),
        ({"policy": {"shares": ["../x"]}}, "policy.shares.0: ID contains a path character"),
        ({"policy": {"shares": "share-1"}}, "policy.shares: Input should be a valid list"),
        ({"policy": {"protected_task_ids": ["a%2Fb"]}}, "policy.protected_task_ids.0: ID contains '%'"),
        ({"policy": {"older": "7d"}}, "policy.older: unknown field"),
        ({"run_id": "mine"}, "run_id: unknown field"),
        ({"idempotency_key": "has space"}, "idempotency_key: String should match pattern"),
        ({"idempotency_key": "k" * 129}, "idempotency_key: String should match pattern"),
        ({"requested_by": "x" * 201}, "requested_by: String should have at most 200 characters"),
    ],
)
def test_start_purge_refuses_what_is_not_in_the_schema(data: dict[str, Any], expected: str) -> None:
    assert expected in refusal(StartPurge, data)


# --- sfs.delete_tasks --------------------------------------------------------------------------------


def test_an_explicit_list_is_accepted_up_to_the_limit() -> None:
    tasks = [{"share_id": "share-1", "task_id": f"task-{n}"} for n in range(MAX_EXPLICIT_TASKS)]
    trigger = DeleteTasks.model_validate({"tasks": tasks, "reason": "ticket 123", "idempotency_key": "t-123"})
    assert len(trigger.tasks) == MAX_EXPLICIT_TASKS


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "tasks: Field required"),
        ({"tasks": []}, "tasks: List should have at least 1 item"),
        ({"tasks": [{"share_id": "../x", "task_id": "t1"}]}, "tasks.0.share_id: ID contains a path character"),
        ({"tasks": [{"share_id": "s1", "task_id": "a/b"}]}, "tasks.0.task_id: ID contains a path character '/'"),
        ({"tasks": [{"share_id": "s1", "task_id": ""}]}, "tasks.0.task_id: ID is empty"),
        ({"tasks": [{"share_id": "s1", "task_id": "x" * 65}]}, "tasks.0.task_id: ID is 65 characters long"),
        ({"tasks": [{"share_id": "s1", "task_id": 12}]}, "tasks.0.task_id: Input should be a valid string"),
        ({"tasks": [{"share_id": "s1"}]}, "tasks.0.task_id: Field required"),
        ({"tasks": [{"share_id": "s1", "task_id": "t1", "force": True}]}, "tasks.0.force: unknown field"),
        ({"tasks": ["s1/t1"]}, "tasks.0: Input should be a valid dictionary or instance of TaskRef"),
        ({"tasks": [{"share_id": "s1", "task_id": "t1"}], "dry_run": "false"}, "dry_run: Input should be a valid"),
    ],
)
def test_delete_tasks_refuses_bad_lists_and_ids(data: dict[str, Any], expected: str) -> None:
    assert expected in refusal(DeleteTasks, data)


def test_an_oversized_list_is_refused_with_one_line() -> None:
    tasks = [{"share_id": "share-1", "task_id": f"task-{n}"} for n in range(MAX_EXPLICIT_TASKS + 1)]
    message = refusal(DeleteTasks, {"tasks": tasks})
    assert message == f"tasks: List should have at most {MAX_EXPLICIT_TASKS} items after validation, not 10001"


def test_many_problems_are_summarised_on_one_line() -> None:
    tasks = [{"share_id": "../x", "task_id": "t"} for _ in range(30)]
    message = refusal(DeleteTasks, {"tasks": tasks})
    assert "\n" not in message
    assert message.count("tasks.") == 20 and message.endswith("; and 10 more")


# --- sfs.nightly_purge and schedule slots --------------------------------------------------------------


def test_nightly_slot_must_be_an_iso_time() -> None:
    assert NightlyPurge.model_validate({}).slot is None
    assert NightlyPurge.model_validate({"slot": "2026-11-29T02:00:00Z"}).slot == "2026-11-29T02:00:00Z"
    assert "slot: not an ISO 8601 time" in refusal(NightlyPurge, {"slot": "last night"})
    assert "when: unknown field" in refusal(NightlyPurge, {"when": "2026-11-29T02:00:00Z"})


def test_last_slot_is_the_latest_cron_time_at_or_before_now() -> None:
    at = datetime(2026, 11, 29, 14, 30, 59, tzinfo=UTC)
    assert last_slot("0 2 * * *", "UTC", at) == datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    assert last_slot("0 2 * * *", "UTC", datetime(2026, 11, 29, 1, 59, tzinfo=UTC)) == datetime(
        2026, 11, 28, 2, 0, tzinfo=UTC
    )
    assert last_slot("* * * * *", "UTC", at) == datetime(2026, 11, 29, 14, 30, tzinfo=UTC)
    # 02:00 in Shanghai is 18:00 UTC the day before.
    assert last_slot("0 2 * * *", "Asia/Shanghai", at) == datetime(2026, 11, 28, 18, 0, tzinfo=UTC)


def test_every_message_for_one_slot_maps_to_one_key() -> None:
    settings = load_settings(schedule_cron="0 2 * * *", schedule_timezone="Asia/Shanghai")
    now = datetime(2026, 11, 29, 14, 0, tzinfo=UTC)
    beat = nightly_slot(settings, None, now)  # beat sends no slot: the latest one
    late = nightly_slot(settings, None, datetime(2026, 11, 29, 17, 59, tzinfo=UTC))  # a late start
    manual_utc = nightly_slot(settings, "2026-11-28T18:00:00+00:00", now)
    manual_local = nightly_slot(settings, "2026-11-29T02:00", now)  # no offset: the schedule's zone
    manual_inside = nightly_slot(settings, "2026-11-29T09:15:00+08:00", now)  # any time maps to its slot
    assert {slot_key(s) for s in (beat, late, manual_utc, manual_local, manual_inside)} == {"nightly-20261128T1800Z"}
    assert slot_key(nightly_slot(settings, None, datetime(2026, 11, 29, 18, 0, tzinfo=UTC))) == "nightly-20261129T1800Z"


def test_schemas_are_json_schemas_of_every_trigger() -> None:
    found = schemas()
    assert set(found) == {"sfs.start_purge", "sfs.delete_tasks", "sfs.nightly_purge"}
    assert all(schema["additionalProperties"] is False for schema in found.values())
    ref = found["sfs.delete_tasks"]["$defs"]["TaskRef"]["properties"]["task_id"]
    assert ref["type"] == "string" and ref["pattern"] == "^[A-Za-z0-9-]{1,64}$"
    assert found["sfs.delete_tasks"]["properties"]["tasks"]["maxItems"] == MAX_EXPLICIT_TASKS
    json.dumps(found)  # plain JSON, ready to publish


# --- the message envelope --------------------------------------------------------------------------


class FakeMessage:
    """What envelope_problem reads of a kombu message."""

    def __init__(self, body: Any, headers: dict[str, Any] | None = None, raw: bytes | None = None) -> None:
        self.headers = {"task": "sfs.start_purge", "id": "m1", "timelimit": [None, None]} | (headers or {})
        self.content_type = "application/json"
        self._body = body
        self._raw = raw

    @property
    def payload(self) -> Any:
        if self._raw is not None:
            try:
                return json.loads(self._raw)
            except ValueError as exc:
                raise DecodeError(str(exc)) from exc
        return self._body


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (FakeMessage([[], {"dry_run": True}, {}]), None),
        (FakeMessage([[], {}, None]), None),
        (FakeMessage([[], {}, {}], {"retries": 0, "expires": "2026-11-29T02:00:00Z"}), None),
        (FakeMessage(None, raw=b"{not json"), "body is not valid application/json"),
        (FakeMessage({"kwargs": {}}), "body must be a JSON array [args, kwargs, embed]"),
        (FakeMessage([[], {}]), "body must be a JSON array [args, kwargs, embed]"),
        (FakeMessage("purge please"), "body must be a JSON array"),
        (FakeMessage([{}, {}, {}]), "body[0] (positional arguments) must be an array"),
        (FakeMessage([[], [1], {}]), "body[1] (keyword arguments) must be an object"),
        (FakeMessage([[], {}, []]), "body[2] (callbacks, chain, chord) must be an object or null"),
        (FakeMessage([[], {}, {}], {"id": None}), "header 'id' must be a non-empty string"),
        (FakeMessage([[], {}, {}], {"id": ""}), "header 'id' must be a non-empty string"),
        (FakeMessage([[], {}, {}], {"timelimit": 5}), "header 'timelimit' must be [hard, soft]"),
        (FakeMessage([[], {}, {}], {"timelimit": ["a", None]}), "header 'timelimit' must be [hard, soft]"),
        (FakeMessage([[], {}, {}], {"eta": "2026-11-29T02:00:00Z"}), "delayed triggers (eta/countdown)"),
        (FakeMessage([[], {}, {}], {"retries": "0"}), "header 'retries' must be an integer"),
        (FakeMessage([[], {}, {}], {"shadow": 5}), "header 'shadow' must be a string or null"),
    ],
)
def test_the_envelope_check_names_what_is_malformed(message: FakeMessage, expected: str | None) -> None:
    problem = envelope_problem(message, None)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_a_protocol_1_message_is_refused() -> None:
    assert "protocol 1" in (envelope_problem(FakeMessage(None), {"task": "sfs.start_purge", "args": []}) or "")


def test_a_raw_message_as_built_by_hand_passes_the_envelope_check() -> None:
    body = json.dumps([[], {"dry_run": True}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    envelope = {"body": base64.b64encode(body.encode()).decode(), "headers": {"task": "sfs.start_purge", "id": "x1"}}
    decoded = FakeMessage(None, envelope["headers"], raw=base64.b64decode(envelope["body"]))
    assert envelope_problem(decoded, None) is None


# --- idempotency keys --------------------------------------------------------------------------------


def test_an_idempotency_key_starts_one_run_and_points_duplicates_at_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    ctx = Context(load_settings(redis_url=redis_url))
    started: list[str | None] = []

    def start(run_id: str | None) -> dict[str, Any]:
        assert run_id is not None
        ctx.audit.create_run(run_id, {"trigger": "message"})
        started.append(run_id)
        return {"accepted": True, "run_id": run_id}

    first = _start_claimed(ctx, "key-1", start)
    second = _start_claimed(ctx, "key-1", start)
    assert len(started) == 1
    assert second == {"accepted": True, "run_id": first["run_id"], "duplicate": True}
    assert redis_client.get("sfs:trigger:key-1") == first["run_id"]
    assert 0 < redis_client.ttl("sfs:trigger:key-1") <= 7 * 86400
    assert [e["run_id"] for e in ctx.audit.events(kind="trigger_duplicate")] == [first["run_id"]]

    assert _start_claimed(ctx, None, lambda run_id: {"run_id": run_id}) == {"run_id": None}  # no key: no claim


def test_a_key_whose_run_was_never_created_is_given_back(redis_url: str, redis_client: redis.Redis) -> None:
    ctx = Context(load_settings(redis_url=redis_url))

    def fail(run_id: str | None) -> dict[str, Any]:
        raise RuntimeError("listing failed")

    with pytest.raises(RuntimeError):
        _start_claimed(ctx, "key-2", fail)
    assert redis_client.get("sfs:trigger:key-2") is None  # a redelivery may try again

    def create_then_fail(run_id: str | None) -> dict[str, Any]:
        assert run_id is not None
        ctx.audit.create_run(run_id, {"trigger": "message"})
        raise RuntimeError("listing failed after the run was created")

    with pytest.raises(RuntimeError):
        _start_claimed(ctx, "key-2", create_then_fail)
    assert redis_client.get("sfs:trigger:key-2") is not None  # the run exists: the key stays with it


# --- the nightly catch-up ------------------------------------------------------------------------------


def test_a_slot_nobody_claimed_is_sent_again_once_within_the_window(redis_url: str, redis_client: redis.Redis) -> None:
    from scheduler.service import catch_up_nightly

    ctx = Context(load_settings(redis_url=redis_url, schedule_cron="0 2 * * *", schedule_enabled=True))
    slot = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)

    assert catch_up_nightly(ctx, slot + timedelta(seconds=60)) is None  # beat's own message may still come
    assert catch_up_nightly(ctx, slot + timedelta(hours=1)) is None  # too late: wait for the next slot
    assert redis_client.llen("sfs.control") == 0

    assert catch_up_nightly(ctx, slot + timedelta(minutes=5)) == "2026-11-29T02:00:00Z"
    assert catch_up_nightly(ctx, slot + timedelta(minutes=6)) is None  # sent once
    (raw,) = redis_client.lrange("sfs.control", 0, -1)
    envelope = json.loads(raw)
    assert envelope["headers"]["task"] == "sfs.nightly_purge"
    assert json.loads(base64.b64decode(envelope["body"]))[1] == {"slot": "2026-11-29T02:00:00Z"}
    assert [e["slot"] for e in ctx.audit.events(kind="nightly_catch_up")] == ["2026-11-29T02:00:00Z"]

    redis_client.set("sfs:trigger:nightly-20261130T0200Z", "20261130-020000-abcdef")  # tomorrow's ran
    assert catch_up_nightly(ctx, slot + timedelta(days=1, minutes=5)) is None
    disabled = Context(load_settings(redis_url=redis_url, schedule_enabled=False))
    assert catch_up_nightly(disabled, slot + timedelta(days=2, minutes=5)) is None
