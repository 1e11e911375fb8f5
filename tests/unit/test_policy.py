"""The selection policy: validation, files, precedence of sources, and the selector's decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from scheduler.policy import (
    Decision,
    Policy,
    PolicyError,
    Selector,
    load_policy_file,
    policy_from_sources,
)
from worker.models import TaskInfo
from worker.settings import Settings

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
P = "0123456789abcdef0123456789abcdef"
S1 = "11111111-2222-3333-4444-555555555555"
S2 = "22222222-2222-3333-4444-555555555555"


def task(
    task_id: str = "t1",
    *,
    share: str = S1,
    status: str | None = "SUCCESS",
    type: str | None = "export",
    age: timedelta | None = timedelta(days=30),
) -> TaskInfo:
    return TaskInfo(P, share, task_id, status, type, None if age is None else NOW - age)


def make_settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def errors_of(**values: Any) -> str:
    with pytest.raises(ValidationError) as info:
        Policy(**values)
    return str(info.value)


# --- The model -------------------------------------------------------------------------------------


def test_defaults_are_the_safe_ones() -> None:
    policy = Policy()
    assert policy.statuses == ("SUCCESS", "FAIL")
    assert policy.types == () and policy.shares == ()
    assert policy.older_than == "7d" and policy.older_than_delta == timedelta(days=7)
    assert policy.protected_task_ids == () and policy.protected_share_ids == ()
    assert policy.max_deletions is None
    assert policy.name is None and policy.description is None


@pytest.mark.parametrize("status", ["DOING", "DELETING"])
def test_running_and_deleting_tasks_can_never_be_selected(status: str) -> None:
    message = errors_of(statuses=["SUCCESS", status])
    assert "statuses" in message
    assert f"{status} can never be selected" in message


@pytest.mark.parametrize(
    ("values", "field", "text"),
    [
        ({"statuses": ["DONE"]}, "statuses", "unknown status 'DONE'"),
        ({"statuses": []}, "statuses", "must name at least one"),
        ({"statuses": "SUCCESS"}, None, None),  # a comma string is accepted
        ({"types": ["import", "migrate"]}, "types", "unknown type 'migrate'"),
        ({"older_than": "a week"}, "older_than", "is not a duration"),
        ({"older_than": 7}, "older_than", "valid string"),
        ({"shares": ["../etc"]}, "shares", "contains a path character"),
        ({"protected_task_ids": ["a b"]}, "protected_task_ids", "contains ' '"),
        ({"protected_share_ids": [""]}, "protected_share_ids", "is empty"),
        ({"max_deletions": -1}, "max_deletions", "greater than or equal to 0"),
        ({"max_deletions": True}, "max_deletions", "valid integer"),
        ({"max_deletions": "10"}, "max_deletions", "valid integer"),
        ({"statuse": ["SUCCESS"]}, "statuse", "Extra inputs are not permitted"),
        ({"name": "x" * 201}, "name", "at most 200"),
    ],
)
def test_validation_errors_name_the_field(values: dict[str, Any], field: str | None, text: str | None) -> None:
    if field is None or text is None:
        Policy(**values)
        return
    message = errors_of(**values)
    assert field in message and text in message


def test_lists_are_deduplicated_and_accept_comma_strings() -> None:
    policy = Policy(statuses="FAIL, SUCCESS,FAIL", types=["export", "export"], protected_task_ids="a,b,a")
    assert policy.statuses == ("FAIL", "SUCCESS")
    assert policy.types == ("export",)
    assert policy.protected_task_ids == ("a", "b")


def test_a_policy_is_immutable() -> None:
    policy = Policy()
    with pytest.raises(ValidationError):
        policy.max_deletions = 5  # type: ignore[misc]


# --- The selector -----------------------------------------------------------------------------------


def test_defaults_select_old_finished_tasks_only() -> None:
    selector = Selector(Policy(), NOW)
    assert selector.decide(task(status="SUCCESS")) == Decision(True, "selected")
    assert selector.decide(task(status="FAIL")).selected
    assert selector.decide(task(status="DOING")) == Decision(False, "status:DOING")
    assert selector.decide(task(status="DELETING")) == Decision(False, "status:DELETING")
    assert selector.decide(task(status=None)) == Decision(False, "status:unknown")
    assert selector.decide(task(status="QUEUED")) == Decision(False, "status:other")
    assert selector.summary() == {
        "selected": 2,
        "status:DELETING": 1,
        "status:DOING": 1,
        "status:other": 1,
        "status:unknown": 1,
    }
    assert selector.selected_count == 2


def test_statuses_narrow_the_selection() -> None:
    selector = Selector(Policy(statuses=["FAIL"]), NOW)
    assert selector.decide(task(status="SUCCESS")) == Decision(False, "status:SUCCESS")
    assert selector.decide(task(status="FAIL")).selected


def test_types() -> None:
    selector = Selector(Policy(types=["import", "export"]), NOW)
    assert selector.decide(task(type="export")).selected
    assert selector.decide(task(type="preload")) == Decision(False, "type:preload")
    assert selector.decide(task(type=None)) == Decision(False, "type:unknown")
    assert selector.decide(task(type="weird")) == Decision(False, "type:other")
    # No types: any type, even an unknown one.
    assert Selector(Policy(), NOW).decide(task(type=None)).selected


def test_older_than_boundary_is_inclusive() -> None:
    selector = Selector(Policy(older_than="7d"), NOW)
    assert selector.decide(task(age=timedelta(days=7))).selected
    assert selector.decide(task(age=timedelta(days=7, microseconds=-1))) == Decision(False, "too_young")
    assert selector.decide(task(age=timedelta(days=7, seconds=1))).selected


def test_older_than_zero_still_needs_a_known_past_end_time() -> None:
    selector = Selector(Policy(older_than="0s"), NOW)
    assert selector.decide(task(age=timedelta(0))).selected
    assert selector.decide(task(age=timedelta(seconds=-1))) == Decision(False, "too_young")  # clock skew
    assert selector.decide(task(age=None)) == Decision(False, "end_time_unknown")


def test_an_unknown_end_time_is_never_old() -> None:
    selector = Selector(Policy(older_than="1s"), NOW)
    assert selector.decide(task(age=None)) == Decision(False, "end_time_unknown")


def test_a_naive_end_time_is_read_as_utc_and_naive_now_is_refused() -> None:
    naive = TaskInfo(P, S1, "t", "SUCCESS", None, datetime(2024, 5, 25, 12, 0))
    assert Selector(Policy(older_than="7d"), NOW).decide(naive).selected
    with pytest.raises(ValueError, match="timezone-aware"):
        Selector(Policy(), datetime(2024, 1, 1))


def test_shares() -> None:
    selector = Selector(Policy(shares=[S1]), NOW)
    assert selector.decide(task(share=S1)).selected
    assert selector.decide(task(share=S2)) == Decision(False, "share_not_in_policy")


def test_protection_by_task_and_by_share() -> None:
    policy = Policy(protected_task_ids=["keep"], protected_share_ids=[S2])
    selector = Selector(policy, NOW)
    assert selector.decide(task("keep")) == Decision(False, "protected_task")
    assert selector.decide(task("keep", share=S2)) == Decision(False, "protected_share")
    assert selector.decide(task("other", share=S2)) == Decision(False, "protected_share")
    assert selector.decide(task("other")).selected
    assert selector.is_protected(S1, "keep") == "protected_task"
    assert selector.is_protected(S2, "anything") == "protected_share"
    assert selector.is_protected(S1, "other") is None


def test_protection_counts_only_tasks_it_actually_saved() -> None:
    selector = Selector(Policy(protected_task_ids=["keep"]), NOW)
    assert selector.decide(task("keep", status="DOING")).reason == "status:DOING"
    assert selector.decide(task("keep", age=timedelta(hours=1))).reason == "too_young"
    assert selector.decide(task("keep")).reason == "protected_task"


def test_the_cap_stops_selection_and_counts_the_rest() -> None:
    selector = Selector(Policy(max_deletions=2), NOW)
    decisions = [selector.decide(task(f"t{n}")) for n in range(4)]
    assert [d.reason for d in decisions] == ["selected", "selected", "over_cap", "over_cap"]
    # Ineligible tasks do not use up the cap, and keep their own reason.
    assert selector.decide(task(status="DOING")).reason == "status:DOING"
    assert selector.summary() == {"selected": 2, "over_cap": 2, "status:DOING": 1}


def test_a_cap_of_zero_selects_nothing() -> None:
    selector = Selector(Policy(max_deletions=0), NOW)
    assert selector.decide(task()) == Decision(False, "over_cap")


_policies = st.builds(
    Policy,
    statuses=st.lists(st.sampled_from(["SUCCESS", "FAIL"]), min_size=1),
    types=st.lists(st.sampled_from(["import", "import_metadata", "preload", "export"])),
    older_than=st.sampled_from(["0s", "1s", "1h", "7d", "30d"]),
    shares=st.lists(st.sampled_from([S1, S2])),
    protected_task_ids=st.lists(st.sampled_from(["t0", "t1", "t2"])),
    protected_share_ids=st.lists(st.sampled_from([S1, S2])),
    max_deletions=st.none() | st.integers(0, 5),
)
_tasks = st.builds(
    task,
    st.sampled_from(["t0", "t1", "t2", "t3", "t4"]),
    share=st.sampled_from([S1, S2]),
    status=st.sampled_from(["SUCCESS", "FAIL", "DOING", "DELETING", None, "X"]),
    type=st.sampled_from(["import", "import_metadata", "preload", "export", None]),
    age=st.none() | st.timedeltas(timedelta(days=-2), timedelta(days=60)),
)


@given(policy=_policies, tasks=st.lists(_tasks, max_size=30))
def test_no_policy_ever_selects_what_it_must_not(policy: Policy, tasks: list[TaskInfo]) -> None:
    selector = Selector(policy, NOW)
    chosen = [t for t in tasks if selector.decide(t).selected]
    for t in chosen:
        assert t.status in policy.statuses and t.status in ("SUCCESS", "FAIL")
        assert t.end_time is not None and NOW - t.end_time >= policy.older_than_delta
        assert t.task_id not in policy.protected_task_ids and t.share_id not in policy.protected_share_ids
        assert not policy.shares or t.share_id in policy.shares
        assert not policy.types or t.type in policy.types
    if policy.max_deletions is not None:
        assert len(chosen) <= policy.max_deletions
    assert sum(selector.summary().values()) == len(tasks)
    assert selector.summary().get("selected", 0) == len(chosen)


# --- Policy files -------------------------------------------------------------------------------------


def test_yaml_policy(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: nightly\n"
        "statuses: [SUCCESS]\n"
        "types:\n  - import\n  - export\n"
        "older_than: 14d\n"
        f"protected_share_ids: ['{S2}']\n"
        "max_deletions: 500\n",
        encoding="utf-8",
    )
    policy = load_policy_file(path)
    assert policy.name == "nightly" and policy.statuses == ("SUCCESS",)
    assert policy.types == ("import", "export") and policy.older_than_delta == timedelta(days=14)
    assert policy.protected_share_ids == (S2,) and policy.max_deletions == 500
    assert policy.model_fields_set == {
        "name",
        "statuses",
        "types",
        "older_than",
        "protected_share_ids",
        "max_deletions",
    }


def test_toml_policy(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        'description = "failed imports"\nstatuses = ["FAIL"]\ntypes = ["import"]\n'
        'older_than = "1w2d"\nprotected_task_ids = ["abc"]\n',
        encoding="utf-8",
    )
    policy = load_policy_file(path)
    assert policy.statuses == ("FAIL",) and policy.protected_task_ids == ("abc",)
    assert policy.older_than_delta == timedelta(days=9)


def test_an_empty_yaml_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text("# nothing set\n", encoding="utf-8")
    assert load_policy_file(path) == Policy()


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("p.yaml", "statuses: [SUCCESS, DOING]\n", ["statuses: DOING can never be selected"]),
        (
            "p.yaml",
            "statuses: [DONE]\nmax_deletions: -3\nolder_than: soon\n",
            ["statuses: unknown status", "older_than: 'soon' is not", "max_deletions: Input should be greater"],
        ),
        ("p.yaml", "protected_task_ids: [ok, 0123]\n", ["protected_task_ids[1]: Input should be a valid string"]),
        ("p.yaml", "older-than: 7d\n", ["older-than: unknown field (allowed: name, description"]),
        ("p.yaml", "statuses: [SUCCESS]\nstatuses: [FAIL]\n", ["not valid YAML: duplicate key 'statuses' (line 2"]),
        ("p.yaml", "statuses: [SUCCESS\n", ["not valid YAML:"]),
        ("p.yaml", "- SUCCESS\n", ["must be a mapping of policy fields, not list"]),
        ("p.yaml", "1: x\n", ["'1': field names must be strings"]),
        ("p.yaml", "? [a, b]\n: x\n", ["not valid YAML: found unhashable key"]),
        ("p.toml", 'types = ["preload", "nope"]\n', ["types: unknown type 'nope'"]),
        ("p.toml", "older_than = 7d\n", ["not valid TOML: "]),
        ("p.toml", "max_deletions = 1.5\n", ["max_deletions: Input should be a valid integer"]),
        ("p.json", "{}", ["unsupported file type '.json'"]),
    ],
)
def test_policy_file_errors_name_the_file_and_the_field(
    tmp_path: Path, name: str, text: str, expected: list[str]
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    lines = info.value.lines
    assert len(lines) == len(expected)
    for line, part in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}: ")
        assert part in line
        assert "\n" not in line


def test_unreadable_and_oversized_policy_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy_file(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(PolicyError, match="larger than"):
        load_policy_file(big)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"name = '\xff'")
    with pytest.raises(PolicyError, match="invalid UTF-8"):
        load_policy_file(bad)


# --- Sources and precedence ----------------------------------------------------------------------------


def test_settings_alone() -> None:
    settings = make_settings(
        statuses="FAIL", types="preload", older_than="3d", share_ids=S1, max_deletions=9, protected_task_ids="k"
    )
    policy = policy_from_sources(settings=settings, file=None, overrides={})
    assert policy.statuses == ("FAIL",) and policy.types == ("preload",)
    assert policy.older_than == "3d" and policy.shares == (S1,)
    assert policy.max_deletions == 9 and policy.protected_task_ids == ("k",)


def test_flags_beat_the_file_which_beats_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("older_than: 14d\nmax_deletions: 100\ntypes: [import]\n", encoding="utf-8")
    settings = make_settings(older_than="3d", max_deletions=9, statuses="FAIL")
    overrides = {"max_deletions": 5, "older_than": None, "types": None}
    policy = policy_from_sources(settings=settings, file=path, overrides=overrides)
    assert policy.max_deletions == 5  # flag
    assert policy.older_than == "14d"  # file; the None flag is ignored
    assert policy.types == ("import",)  # file
    assert policy.statuses == ("FAIL",)  # settings: the file did not set it


def test_the_settings_policy_file_is_used_when_none_is_given(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('older_than = "30d"\n', encoding="utf-8")
    settings = make_settings(policy_file=str(path))
    assert policy_from_sources(settings=settings, file=None, overrides={}).older_than == "30d"
    other = tmp_path / "other.toml"
    other.write_text('older_than = "1d"\n', encoding="utf-8")
    assert policy_from_sources(settings=settings, file=other, overrides={}).older_than == "1d"


def test_protection_from_settings_cannot_be_overridden_away(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"protected_task_ids: [fromfile]\nprotected_share_ids: []\nshares: [{S1}]\n", encoding="utf-8")
    settings = make_settings(protected_task_ids="fromsettings", protected_share_ids=S2)
    overrides = {"protected_task_ids": ["fromflag"], "protected_share_ids": []}
    policy = policy_from_sources(settings=settings, file=path, overrides=overrides)
    assert policy.protected_task_ids == ("fromsettings", "fromfile", "fromflag")
    assert policy.protected_share_ids == (S2,)
    selector = Selector(policy, NOW)
    assert selector.decide(task("fromsettings")).reason == "protected_task"
    assert selector.is_protected(S2, "x") == "protected_share"


def test_every_source_error_is_reported_with_its_source(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("statuses: [DELETING]\n", encoding="utf-8")
    settings = make_settings(statuses="DOING")  # the settings allow any status; the policy does not
    with pytest.raises(PolicyError) as info:
        policy_from_sources(settings=settings, file=path, overrides={"max_deletions": -1, "colour": "red"})
    lines = info.value.lines
    assert lines[0].startswith("settings: statuses: DOING can never be selected")
    assert lines[1].startswith(f"{path}: statuses: DELETING can never be selected")
    assert any(line.startswith("flags: max_deletions: ") for line in lines)
    assert any(line.startswith("flags: colour: unknown field") for line in lines)
    assert str(info.value).startswith("invalid policy:\n  settings: statuses:")
