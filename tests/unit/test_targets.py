"""The targets file (``SFS_CLEANUP_TARGETS_FILE``): what it accepts, how each bad input is refused
(one line naming file, target and field), how a target becomes settings, and that no secret it
resolves shows up in a repr or an error. Also the plan entry that names a target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.api.auth import AuthError
from worker.ledger import Batch, encode_batch
from worker.settings import Settings
from worker.targets import TargetsError, load_targets, schema

PROJECT = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
SHARE = "7d4f5a9e-1c2b-4d3e-8f60-0a1b2c3d4e5f"
OTHER_SHARE = "7d4f5a9e-1c2b-4d3e-8f60-0a1b2c3d4e60"
SK = "the-secret-key-of-account-one-0001"
TOKEN = "MIItoken-of-account-two-0002"


def target(**fields: Any) -> dict[str, Any]:
    return {
        "name": "sg",
        "region": "ap-southeast-1",
        "project_id": PROJECT,
        "credentials": {"env": {"access_key": "ONE_AK", "secret_key": "ONE_SK"}},
    } | fields


def write(tmp_path: Path, *targets: dict[str, Any], raw: str | None = None) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(raw if raw is not None else json.dumps({"targets": list(targets)}))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(TargetsError) as caught:
        load_targets(path)
    assert caught.value.exit_code == 2
    return caught.value.lines


def base(**fields: Any) -> Settings:
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


# --- A good file --------------------------------------------------------------------------


def test_a_valid_file_with_every_kind_of_credentials(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        target(rate=20, burst=2, name_pattern="hpc-*"),
        target(name="hk", region="ap-east-1", credentials={"env": {"token": "TWO_TOKEN"}}, shares=[SHARE, SHARE]),
        target(name="mounted", credentials={"file": "/run/secrets/one.yaml"}, endpoint="http://127.0.0.1:9/"),
        target(name="self", region="cn-north-4", credentials="agency"),
        target(name="other", project_id=OTHER, credentials={"assume": {"domain": "acct-2", "agency": "cleanup"}}),
    )
    found = load_targets(path)
    assert found.names == ["sg", "hk", "mounted", "self", "other"]
    sg, hk, mounted, _, _ = found.targets
    assert sg.api_endpoint == "https://sfs-turbo.ap-southeast-1.myhuaweicloud.com"
    assert mounted.api_endpoint == "http://127.0.0.1:9"
    assert hk.shares == [SHARE]  # a share named twice is listed once
    kinds = [t.credentials_kind for t in found.targets]
    assert kinds == ["env-aksk", "env-token", "file", "agency", "assume"]
    assert schema()["$defs"]["Target"]["required"] == ["name", "region", "project_id", "credentials"]


def test_a_target_becomes_settings_with_its_endpoint_project_shares_rate_and_credentials(tmp_path: Path) -> None:
    found = load_targets(
        write(tmp_path, target(rate=7, burst=3), target(name="hk", region="ap-east-1", shares=[SHARE]))
    )
    settings = base(rate_limit=50, rate_burst=5, auth_token=TOKEN, share_name_pattern="x-*")
    sg = found.get("sg").settings(settings, environ={"ONE_AK": "AKONE", "ONE_SK": SK})
    assert (sg.api_endpoint, sg.project_id, sg.share_ids) == (
        "https://sfs-turbo.ap-southeast-1.myhuaweicloud.com",
        PROJECT,
        [],
    )
    assert (sg.rate_limit, sg.rate_burst, sg.share_name_pattern) == (7, 3, "x-*")
    assert sg.auth_mode == "aksk" and sg.access_key == "AKONE" and sg.auth_token is None  # the base's token is gone
    assert sg.secret_key is not None and sg.secret_key.get_secret_value() == SK
    hk = found.get("hk").settings(settings, environ={"ONE_AK": "AKONE", "ONE_SK": SK})
    assert (hk.share_ids, hk.rate_limit, hk.rate_burst) == ([SHARE], 50, 5)  # default: the global rate
    assert settings.auth_token is not None and settings.project_id is None  # the base is untouched


def test_agency_and_assume_use_the_platform_credentials(tmp_path: Path) -> None:
    found = load_targets(
        write(
            tmp_path,
            target(name="self", credentials="agency"),
            target(
                name="other",
                project_id=OTHER,
                credentials={"assume": {"domain": "acct-2", "agency": "cleanup", "duration_s": 900}},
            ),
        )
    )
    settings = base(access_key="AKBASE", secret_key=SK)
    own = found.get("self").settings(settings, environ={})
    assert own.auth_mode == "metadata" and own.access_key is None and own.agency_name is None
    other = found.get("other").settings(settings, environ={})
    assert other.auth_mode == "metadata"
    assert (other.agency_domain, other.agency_name, other.agency_duration_s) == ("acct-2", "cleanup", 900)
    assert other.agency_iam_endpoint == "https://iam.ap-southeast-1.myhuaweicloud.com"


def test_a_secret_file_holds_the_keys(tmp_path: Path) -> None:
    secret = tmp_path / "one.yaml"
    secret.write_text(f"access_key: AKFILE\nsecret_key: {SK}\nsecurity_token: STS-{SK}\n")
    found = load_targets(write(tmp_path, target(credentials={"file": str(secret)})))
    resolved = found.get("sg").settings(base(), environ={})
    assert resolved.auth_mode == "aksk" and resolved.access_key == "AKFILE"
    assert resolved.security_token is not None and resolved.security_token.get_secret_value() == f"STS-{SK}"


# --- Bad files: one line each, naming the file, the target and the field -------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "Bad Name"}, "target #1: name: String should match pattern"),
        ({"region": "ap_south!"}, "target 'sg': region: String should match pattern"),
        ({"project_id": "../etc"}, "target 'sg': project_id: ID contains a path character '.'"),
        ({"project_id": 1234}, "target 'sg': project_id: must be a string: quote it"),
        ({"endpoint": "ftp://x"}, "target 'sg': endpoint: must start with https://"),
        ({"credentials": "static"}, "target 'sg': credentials: Input should be 'agency'"),
        ({"credentials": {"vault": "x"}}, "target 'sg': credentials: must be agency, or a mapping with one key"),
        ({"credentials": {"env": {"access_key": "A"}}}, "target 'sg': credentials.env: needs token, or both"),
        (
            {"credentials": {"env": {"token": "T", "access_key": "A", "secret_key": "S"}}},
            "target 'sg': credentials.env: either token, or access_key and secret_key",
        ),
        ({"credentials": {"env": {"token": "not a name"}}}, "target 'sg': credentials.env.token: String should match"),
        ({"credentials": {"file": "relative.yaml"}}, "target 'sg': credentials.file: must be an absolute path"),
        ({"credentials": {"assume": {"domain": "d"}}}, "target 'sg': credentials.assume.agency: Field required"),
        ({"shares": ["a/b"]}, "target 'sg': shares: share ID 'a/b' contains a path character"),
        (
            {"shares": [SHARE], "name_pattern": "x*"},
            "target 'sg': name_pattern: selects among the shares found: not with a shares list",
        ),
        ({"name_pattern": "a b"}, "target 'sg': name_pattern: must be a glob"),
        ({"rate": 0}, "target 'sg': rate: Input should be greater than 0"),
        ({"burst": 0}, "target 'sg': burst: Input should be greater than or equal to 1"),
        ({"secret_key": "x"}, "target 'sg': secret_key: unknown field"),
    ],
)
def test_each_bad_field_is_one_line_naming_file_target_and_field(
    tmp_path: Path, fields: dict[str, Any], expected: str
) -> None:
    path = write(tmp_path, target(**fields))
    lines = problems(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: ") and expected in lines[0], lines


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("targets: [", "not valid YAML"),
        ("- name: a\n", "a targets file is a mapping with one key"),
        ("targets: []\n", "file: targets: List should have at least 1 item"),
        ("targets: [{}]\nextra: 1\n", "file: extra: unknown field"),
    ],
)
def test_a_file_that_is_not_a_targets_file(tmp_path: Path, raw: str, expected: str) -> None:
    lines = problems(write(tmp_path, raw=raw))
    assert any(expected in line for line in lines), lines


@pytest.mark.parametrize(
    ("first", "second", "says"),
    [
        ({}, {"shares": [SHARE]}, "each must list its shares"),  # discovery would plan the other's tasks
        ({"shares": [SHARE]}, {"shares": [SHARE]}, "no share twice"),
        ({"shares": [SHARE]}, {"shares": [OTHER_SHARE], "rate": 5}, "same rate and burst"),
    ],
)
def test_two_targets_of_one_project_at_one_endpoint_must_not_overlap(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], says: str
) -> None:
    path = write(tmp_path, target(**first), target(name="sg-again", **second))
    (line,) = problems(path)
    assert line.startswith(f"{path}: file: targets: targets 'sg' and 'sg-again' name the same project") and says in line
    # Disjoint share lists at one rate are fine, and so is the same project in another region.
    fine = write(
        tmp_path, target(shares=[SHARE]), target(name="b", shares=[OTHER_SHARE]), target(name="hk", region="ap-east-1")
    )
    assert load_targets(fine).names == ["sg", "b", "hk"]


def test_two_targets_of_one_name_and_a_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, target(), target(region="ap-east-1"))
    assert problems(path) == [f"{path}: file: targets: target name 'sg' is used twice"]
    missing = problems(tmp_path / "nowhere.yaml")
    assert missing == [f"{tmp_path / 'nowhere.yaml'}: cannot read: No such file or directory"]
    found = load_targets(write(tmp_path, target()))
    with pytest.raises(TargetsError, match=r"no target named 'hk' \(the file has: sg\)"):
        found.get("hk")


# --- Secrets never in a repr or an error ------------------------------------------------------


def test_a_missing_variable_names_the_target_and_variable_never_a_value(tmp_path: Path) -> None:
    found = load_targets(write(tmp_path, target()))
    with pytest.raises(AuthError) as caught:
        found.get("sg").settings(base(), environ={"ONE_AK": "AKONE"})
    assert str(caught.value) == "target 'sg': credentials.env.secret_key: $ONE_SK is not set in this process"
    assert caught.value.exit_code == 2


def test_no_resolved_secret_shows_in_a_repr_or_a_dump(tmp_path: Path) -> None:
    found = load_targets(
        write(tmp_path, target(), target(name="hk", region="ap-east-1", credentials={"env": {"token": "TWO"}}))
    )
    environ = {"ONE_AK": "AKONE", "ONE_SK": SK, "TWO": TOKEN}
    for name in found.names:
        resolved = found.get(name).settings(base(), environ=environ)
        shown = repr(resolved) + str(resolved) + json.dumps(resolved.model_dump(mode="json"))
        shown += repr(found) + json.dumps(found.get(name).describe())
        assert SK not in shown and TOKEN not in shown


def test_a_bad_secret_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = tmp_path / "bad.yaml"
    for content in (
        f"access_key: AK\nsecret_key: [{SK}",
        f"just {SK}",
        f"token: {TOKEN}\naccess_key: A\nsecret_key: {SK}",
    ):
        secret.write_text(content)
        found = load_targets(write(tmp_path, target(credentials={"file": str(secret)})))
        with pytest.raises(AuthError) as caught:
            found.get("sg").settings(base(), environ={})
        message = str(caught.value)
        assert message.startswith(f"target 'sg': credentials.file {secret}: ")
        assert SK not in message and TOKEN not in message


def test_a_bad_file_never_echoes_a_value_it_was_given(tmp_path: Path) -> None:
    # Someone pasted a key where a variable's name goes: the error must not repeat it.
    path = write(tmp_path, target(credentials={"env": {"access_key": "AK", "secret_key": SK.replace("-", " ")}}))
    lines = problems(path)
    assert lines and all(SK.replace("-", " ") not in line for line in lines)


# --- The plan entry ----------------------------------------------------------------------------


def test_a_plan_entry_names_its_target_and_one_without_is_read_as_before() -> None:
    legacy = f"{SHARE}|t1,?t2"
    assert encode_batch(SHARE, ["t1", "t2"], {"t2"}) == legacy  # no target: exactly the old encoding
    old = Batch.parse("r", 0, legacy)
    assert (old.target, old.share_id, old.task_ids, old.recheck) == (None, SHARE, ("t1", "t2"), frozenset({"t2"}))
    entry = encode_batch(SHARE, ["t1", "t2"], {"t2"}, target="prod-sg")
    assert entry == f"prod-sg@{SHARE}|t1,?t2"
    batch = Batch.parse("r", 3, entry)
    assert (batch.target, batch.share_id, batch.task_ids, batch.recheck) == ("prod-sg", SHARE, ("t1", "t2"), {"t2"})
    assert batch.encode() == entry and Batch.parse("r", 1, f"a_b@{SHARE}|t").target == "a_b"


# --- Metrics by target -------------------------------------------------------------------------


def test_api_answers_are_counted_by_target_as_well(redis_url: str) -> None:
    import redis
    from prometheus_client import generate_latest

    from scheduler.metrics import registry_for
    from tests.unit.test_metrics import _answer, sample
    from worker.apimetrics import ApiStats
    from worker.settings import load_settings

    stats = ApiStats(redis.Redis.from_url(redis_url), "sfs", flush_interval_s=3600)
    stats.observe("delete", _answer(202), "prod-sg")
    stats.observe("delete", _answer(202), "prod-sg")
    stats.observe("delete", _answer(202), "research")
    stats.observe("delete", _answer(202))  # the settings' one project: no target
    stats.observe("list", _answer(200), "research")
    assert stats.flush()
    stats.close(timeout=1)
    text = generate_latest(registry_for(load_settings(redis_url=redis_url))).decode()
    ok = {"operation": "delete", "status": "202", "error_code": "none"}
    assert sample(text, "sfs_cleanup_api_responses_total", **ok) == 4.0  # every call, as before
    assert sample(text, "sfs_cleanup_api_target_responses_total", target="prod-sg", **ok) == 2.0
    assert sample(text, "sfs_cleanup_api_target_responses_total", target="research", **ok) == 1.0
    listed = {"operation": "list", "status": "200", "error_code": "none"}
    assert sample(text, "sfs_cleanup_api_target_responses_total", target="research", **listed) == 1.0


def test_the_report_table_shows_each_target() -> None:
    from rich.console import Console

    from scheduler.report import render_report

    rate = {"requests": 4, "average_rps": 2.0, "busiest_second": 2, "seconds": 0}
    report = {
        "run_id": "r1",
        "status": "finished",
        "dry_run": False,
        "selected": 4,
        "outcomes": {"deleted": 3, "failed": 1},
        "rate": rate,
        "retries": 0,
        "throttled": 0,
        "elapsed_s": 2.0,
        "targets": {
            "sg": {"region": "ap-southeast-1", "project_id": PROJECT, "planned": 3, "outcomes": {"deleted": 3}},
            "hk": {"region": "ap-east-1", "project_id": OTHER, "planned": 1, "outcomes": {"failed": 1}},
        },
    }
    console = Console(record=True, width=200)
    render_report(report, console)
    text = console.export_text()
    assert f"target sg (ap-southeast-1 {PROJECT}): planned 3; deleted 3" in text
    assert f"target hk (ap-east-1 {OTHER}): planned 1; failed 1" in text


def test_the_exporter_shows_each_targets_planned_tasks(redis_url: str) -> None:
    import redis
    from prometheus_client import generate_latest

    from scheduler.metrics import registry_for
    from tests.unit.test_metrics import sample
    from worker.ledger import Audit
    from worker.settings import load_settings

    audit = Audit(redis.Redis.from_url(redis_url), prefix="sfs")
    audit.create_run("rt", {"trigger": "cli", "dry_run": False})
    audit.add_batches("rt", [(0, SHARE, ["t1", "t2"], "prod-sg"), (1, SHARE, ["t3"], "research")])
    summary = {"targets": {"prod-sg": {"planned": 2}, "research": {"planned": 1}}}
    audit.freeze("rt", 3, batches=2, summary=json.dumps(summary))
    assert [b.target for b in sorted(audit.iter_batches("rt"), key=lambda b: b.number)] == ["prod-sg", "research"]
    text = generate_latest(registry_for(load_settings(redis_url=redis_url))).decode()
    assert sample(text, "sfs_cleanup_run_target_planned_tasks", run_id="rt", target="prod-sg") == 2.0
    assert sample(text, "sfs_cleanup_run_target_planned_tasks", run_id="rt", target="research") == 1.0
