"""Small edges: one cap over every source, huge durations, the log mask, control job time limits, own tasks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from scheduler.policy import Policy, PolicyError, Selector, policy_from_sources
from worker.durations import parse_duration
from worker.logging import redact
from worker.models import TaskInfo
from worker.settings import SettingsError, load_settings

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def full(n: int) -> TaskInfo:
    return TaskInfo("p1", "s1", f"full-{n}", status="SUCCESS", end_time=NOW - timedelta(days=30))


@pytest.mark.parametrize("bare_first", [True, False])
def test_entries_admitted_without_the_status_rules_count_against_the_same_cap(bare_first: bool) -> None:
    selector = Selector(Policy(max_deletions=5), NOW)
    bare = [("bare", n) for n in range(4)]
    listed = [("full", n) for n in range(4)]
    decisions = [
        selector.admit("s1", f"bare-{n}") if kind == "bare" else selector.decide(full(n))
        for kind, n in (bare + listed if bare_first else listed + bare)
    ]
    assert [d.selected for d in decisions] == [True] * 5 + [False] * 3
    assert {d.reason for d in decisions[5:]} == {"over_cap"}
    assert selector.selected_count == 5
    assert selector.summary() == {"selected": 5, "over_cap": 3}


def test_admit_still_honours_protection_before_the_cap() -> None:
    selector = Selector(Policy(max_deletions=1, protected_task_ids=("t1",), protected_share_ids=("s9",)), NOW)
    assert selector.admit("s1", "t1").reason == "protected_task"
    assert selector.admit("s9", "t2").reason == "protected_share"
    assert selector.admit("s1", "t3").selected
    assert selector.admit("s1", "t4").reason == "over_cap"


@pytest.mark.parametrize("text", ["1000000d", "99999999999d", "36501d", "5300w", "9" * 400 + "s"])
def test_a_huge_duration_is_refused_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match="too long a duration: at most 36500d"):
        parse_duration(text)


def test_the_longest_duration_still_leaves_a_usable_cutoff() -> None:
    assert parse_duration("36500d") == timedelta(days=36500)
    assert Selector(Policy(older_than="36500d"), NOW).cutoff.year == 1926


def test_a_huge_older_than_is_a_policy_or_settings_error_not_an_overflow() -> None:
    with pytest.raises(ValidationError, match="too long"):
        Policy(older_than="1000000d")
    with pytest.raises(PolicyError) as info:
        policy_from_sources(settings=load_settings(), file=None, overrides={"older_than": "99999999999d"})
    assert info.value.lines == ["flags: older_than: '99999999999d' is too long a duration: at most 36500d (100 years)"]
    with pytest.raises(SettingsError) as settings_info:
        load_settings(older_than="1000000d")
    assert settings_info.value.lines[0].startswith("SFS_CLEANUP_OLDER_THAN")


def test_the_log_mask_keeps_task_and_similar_fields_and_masks_secret_keys() -> None:
    event = {
        "event": "job done",
        "task": "sfs.purge_batch",
        "disk": "sda",
        "ask": "why",
        "sk": "S1",
        "ak_sk": "S2",
        "secret_key": "S3",
        "x-auth-token": "S4",
        "meta": {"task": "sfs.reconcile", "SK": "S5", "password": "S6"},
    }
    masked = redact(None, "", dict(event))
    assert masked["task"] == "sfs.purge_batch" and masked["disk"] == "sda" and masked["ask"] == "why"
    assert masked["meta"]["task"] == "sfs.reconcile"
    for key in ("sk", "ak_sk", "secret_key", "x-auth-token"):
        assert masked[key] == "***", key
    assert masked["meta"]["SK"] == masked["meta"]["password"] == "***"


def test_a_control_time_limit_the_visibility_timeout_does_not_cover_is_refused() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(visibility_timeout_s=3600, control_time_limit_s=3600)
    (line,) = info.value.lines
    assert line.startswith("SFS_CLEANUP_VISIBILITY_TIMEOUT_S") and "SFS_CLEANUP_CONTROL_TIME_LIMIT_S" in line
    assert load_settings(visibility_timeout_s=3600, control_time_limit_s=3540).control_job_time_limit_s == 3540


def test_control_jobs_run_under_a_time_limit_the_visibility_timeout_covers() -> None:
    from scheduler import service
    from scheduler.jobs import CONTROL_QUEUE, DELETE_TASKS, NIGHTLY, START_PURGE
    from worker.celery_app import create_app
    from worker.jobnames import DELETE_QUEUE

    settings = load_settings(visibility_timeout_s=2000, job_time_limit_s=1800)
    app = create_app(settings, queues=(DELETE_QUEUE, CONTROL_QUEUE))
    service.register(app)
    for name in (START_PURGE, DELETE_TASKS, NIGHTLY):
        task = app.tasks[name]
        assert task.time_limit is not None and task.time_limit + 60 <= settings.visibility_timeout_s, name
        assert task.time_limit == 1940 and task.soft_time_limit == 1880


def test_each_app_keeps_its_own_tasks_bound_to_its_own_settings() -> None:
    """Our tasks are closures over their app's settings: one app's must never answer for another
    app built in the same process (Celery shares tasks between apps unless told not to)."""
    import warnings

    from celery.exceptions import DuplicateTaskNameWarning

    from scheduler import service
    from scheduler.jobs import CONTROL_QUEUE, START_PURGE
    from worker.celery_app import create_app
    from worker.jobnames import DELETE_QUEUE, PURGE_BATCH

    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateTaskNameWarning)
        apps = []
        for limit in (1800, 900):
            settings = load_settings(job_time_limit_s=limit, visibility_timeout_s=limit + 200)
            app = create_app(settings, queues=(DELETE_QUEUE, CONTROL_QUEUE))
            service.register(app)
            app.finalize()
            apps.append(app)
        first, second = apps
        for name in (PURGE_BATCH, START_PURGE):
            assert first.tasks[name] is not second.tasks[name], name
            assert first.tasks[name].app is first and second.tasks[name].app is second, name
        assert first.tasks[START_PURGE].time_limit != second.tasks[START_PURGE].time_limit
