"""Named policies in one file: validation that names file, policy and field; the layer they form;
their schedules as beat entries with their own slot keys; the JSON Schema from the model."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
import yaml

from scheduler.cron import slot_key
from scheduler.policies import load_policy_set, named_policy, schedule_of, schedules, schema, validate_file
from scheduler.policy import PolicyError, policy_from_sources
from scheduler.schedule import beat_schedule
from worker.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "policies.example.yaml"


def settings_with(path: Path, **extra: object) -> object:
    return load_settings(redis_url="redis://127.0.0.1:1/0", policies_file=str(path), **extra)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(text)
    return path


def test_the_example_file_is_valid_and_both_policies_are_scheduled() -> None:
    found = load_policy_set(EXAMPLE)
    assert set(found.scheduled()) == {"finished-imports", "old-exports"}
    report = validate_file(EXAMPLE)
    assert report["kind"] == "policies" and report["policies"]["old-exports"]["older_than"] == "30d"


def test_each_scheduled_policy_is_its_own_beat_entry_only_when_the_schedule_is_on() -> None:
    off = beat_schedule(settings_with(EXAMPLE))  # type: ignore[arg-type]
    assert set(off) == {"reconcile"}
    on = beat_schedule(settings_with(EXAMPLE, schedule_enabled=True))  # type: ignore[arg-type]
    assert set(on) == {"reconcile", "nightly-purge:finished-imports", "nightly-purge:old-exports"}
    entry = on["nightly-purge:old-exports"]
    assert entry["kwargs"] == {"policy": "old-exports"} and entry["task"] == "sfs.nightly_purge"
    assert entry["schedule"].day_of_week == {0} and entry["schedule"].hour == {3}


def test_without_scheduled_policies_the_settings_schedule_runs(tmp_path: Path) -> None:
    path = write(tmp_path, "policies:\n  manual-only:\n    older_than: 3d\n")
    on = beat_schedule(settings_with(path, schedule_enabled=True))  # type: ignore[arg-type]
    assert set(on) == {"reconcile", "nightly-purge"} and on["nightly-purge"]["kwargs"] == {}


def test_slots_of_two_policies_at_the_same_time_are_claimed_apart() -> None:
    s = settings_with(EXAMPLE)
    slot = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    keys = {schedule.key(slot) for schedule in schedules(s)}  # type: ignore[arg-type]
    assert keys == {"nightly-finished-imports-20261129T0200Z", "nightly-old-exports-20261129T0200Z"}
    assert slot_key(slot) == "nightly-20261129T0200Z" not in keys
    with pytest.raises(PolicyError, match="no policy named 'nope'"):
        schedule_of(s, "nope")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("policies:\n  a:\n    colour: red\n", "policies.a.colour: unknown field (allowed: name, description"),
        ("policies:\n  a:\n    schedule: '0 2 * *'\n", "policies.a.schedule: cron '0 2 * *': want 5 fields"),
        ("policies:\n  a:\n    timezone: Mars/Olympus\n", "policies.a.timezone: unknown time zone 'Mars/Olympus'"),
        ("policies:\n  a:\n    statuses: [DOING]\n", "policies.a.statuses: DOING can never be selected"),
        ("policies:\n  Bad Name:\n    older_than: 1d\n", "policies.Bad Name: a policy name is lowercase letters"),
        ("policies: {}\n", "policies: Dictionary should have at least 1 item"),
        ("policies:\n  a:\n    max_deletions: 'yes'\n", "policies.a.max_deletions: Input should be a valid integer"),
    ],
)
def test_every_problem_names_the_file_the_policy_and_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy_set(path)
    assert any(line.startswith(f"{path}: ") and expected in line for line in caught.value.lines), caught.value.lines


def test_a_named_policy_sits_between_settings_and_the_policy_file_and_flags(tmp_path: Path) -> None:
    names = write(
        tmp_path,
        "policies:\n  nightly:\n    older_than: 3d\n    types: [export]\n    max_deletions: 10\n"
        "    protected_task_ids: [task-a]\n",
    )
    file = tmp_path / "one.yaml"
    file.write_text("max_deletions: 20\n")
    s = settings_with(names, older_than="9d", max_deletions=5, protected_task_ids="task-b")
    named = named_policy(s, "nightly")  # type: ignore[arg-type]
    merged = policy_from_sources(settings=s, named=named, file=file, overrides={"older_than": "1d"})  # type: ignore[arg-type]
    assert merged.name == "nightly" and merged.types == ("export",)
    assert merged.max_deletions == 20 and merged.older_than == "1d"  # file and flags beat the named policy
    assert set(merged.protected_task_ids) == {"task-a", "task-b"}  # protection merged, never overridden
    alone = policy_from_sources(settings=s, named=named, file=None, overrides={})  # type: ignore[arg-type]
    assert alone.older_than == "3d" and alone.max_deletions == 10  # the named policy beats the settings


def test_the_schema_accepts_both_file_kinds_and_refuses_what_the_model_refuses() -> None:
    doc = schema()
    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), doc)
    jsonschema.validate({"older_than": "7d", "types": ["export"]}, doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"policies": {"a": {"colour": "red"}}}, doc)


def test_policy_validate_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "policies:\n  a:\n    colour: red\n    older_than: soon\n")
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "policy", "validate", str(path)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 2, result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "policy", "validate", str(EXAMPLE), "--json"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert good.returncode == 0 and set(json.loads(good.stdout)["policies"]) == {"finished-imports", "old-exports"}
