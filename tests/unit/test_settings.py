"""Settings: read from SFS_CLEANUP_* variables and .env, every problem one line naming its variable."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from worker.durations import parse_duration
from worker.envnames import NOT_SETTINGS
from worker.settings import Settings, SettingsError, load_settings, load_settings_or_exit

REPO = Path(__file__).resolve().parents[2]
SECRETS = ("TOKEN-s3cr3t-1", "FLOWER-s3cr3t-2", "STS-s3cr3t-3", "IAM-s3cr3t-4", "SK-s3cr3t-5")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SFS_CLEANUP_* variable from outside, and a working directory with no .env."""
    for name in list(os.environ):
        if name.startswith("SFS_CLEANUP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems(**env: str) -> list[str]:
    """The SettingsError lines for these SFS_CLEANUP_<NAME> variables (set in the real environment)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(f"SFS_CLEANUP_{name.upper()}", value)
        with pytest.raises(SettingsError) as info:
            load_settings()
    return info.value.lines


def assert_one_line_each(lines: list[str]) -> None:
    for line in lines:
        assert "\n" not in line, line


# --- Defaults and parsing ----------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.broker_url == s.redis_url
    assert s.api_endpoint is None
    assert s.project_id is None
    assert s.share_ids == []
    assert s.list_page_size == 1000
    assert s.rate_limit == 20.0
    assert s.statuses == ["SUCCESS", "FAIL"]
    assert s.types == []
    assert s.older_than == "7d"
    assert s.job_time_limit_s + 60 <= s.visibility_timeout_s
    assert s.auth_mode == "none"


def test_broker_url_defaults_to_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFS_CLEANUP_REDIS_URL", "redis://10.0.0.5:6380/3")
    assert load_settings().broker_url == "redis://10.0.0.5:6380/3"


def test_broker_url_can_be_set_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFS_CLEANUP_REDIS_URL", "redis://10.0.0.5:6380/3")
    monkeypatch.setenv("SFS_CLEANUP_BROKER_URL", "redis://10.0.0.6:6379/1")
    s = load_settings()
    assert (s.redis_url, s.broker_url) == ("redis://10.0.0.5:6380/3", "redis://10.0.0.6:6379/1")


def test_share_ids_are_comma_separated_with_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = (
        "5bc8fbbc-bde5-4099-8164-d8399f767c45",
        "0a1b2c3d-0000-4000-8000-000000000001",
        "0a1b2c3d-0000-4000-8000-000000000002",
    )
    monkeypatch.setenv("SFS_CLEANUP_SHARE_IDS", f" {a} ,{b},, {c} ,")
    assert load_settings().share_ids == [a, b, c]


def test_status_and_type_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFS_CLEANUP_STATUSES", "FAIL")
    monkeypatch.setenv("SFS_CLEANUP_TYPES", "import, export")
    s = load_settings()
    assert s.statuses == ["FAIL"]
    assert s.types == ["import", "export"]


def test_endpoint_trailing_slash_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFS_CLEANUP_API_ENDPOINT", "https://sfs-turbo.cn-north-4.myhuaweicloud.com/")
    assert load_settings().api_endpoint == "https://sfs-turbo.cn-north-4.myhuaweicloud.com"


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({"AUTH_TOKEN": "t"}, "token"),
        ({"ACCESS_KEY": "AK", "SECRET_KEY": "SK"}, "aksk"),
        (
            {"IAM_ENDPOINT": "https://iam.example", "IAM_USER": "u", "IAM_PASSWORD": "p", "IAM_DOMAIN": "d"},
            "iam",
        ),
    ],
)
def test_auth_mode(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], mode: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"SFS_CLEANUP_{name}", value)
    assert load_settings().auth_mode == mode


# --- One line per problem, naming the variable -------------------------------------------------


def test_bad_share_id_is_one_line_naming_the_variable() -> None:
    lines = problems(share_ids="5bc8fbbc-bde5-4099-8164-d8399f767c45,../etc")
    assert len(lines) == 1
    assert lines[0].startswith("SFS_CLEANUP_SHARE_IDS: ")
    assert "'../etc'" in lines[0]
    assert "path character" in lines[0]


def test_negative_rate_limit_is_one_line_naming_the_variable() -> None:
    lines = problems(rate_limit="-5")
    assert lines == ["SFS_CLEANUP_RATE_LIMIT: Input should be greater than 0"]


def test_unparsable_rate_limit_names_the_variable() -> None:
    lines = problems(rate_limit="fast")
    assert len(lines) == 1
    assert lines[0].startswith("SFS_CLEANUP_RATE_LIMIT: ")
    assert "number" in lines[0]


def test_unknown_status_is_one_line_naming_the_variable() -> None:
    lines = problems(statuses="SUCCESS,DONE")
    assert len(lines) == 1
    assert lines[0].startswith("SFS_CLEANUP_STATUSES: ")
    assert "'DONE'" in lines[0]
    assert "SUCCESS" in lines[0]  # says what is allowed


def test_bad_project_id_names_the_variable() -> None:
    lines = problems(project_id="abc/def")
    assert len(lines) == 1
    assert lines[0].startswith("SFS_CLEANUP_PROJECT_ID: ")


def test_bad_older_than_names_the_variable() -> None:
    lines = problems(older_than="a week")
    assert len(lines) == 1
    assert lines[0].startswith("SFS_CLEANUP_OLDER_THAN: ")
    assert "7d" in lines[0]


def test_bad_endpoint_names_the_variable() -> None:
    lines = problems(api_endpoint="sfs-turbo.example.com")
    assert len(lines) == 1
    assert lines[0].startswith("SFS_CLEANUP_API_ENDPOINT: ")
    assert "https://" in lines[0]


def test_field_problems_are_reported_together() -> None:
    lines = problems(share_ids="a/b", rate_limit="-1", statuses="DONE", redis_url="http://localhost")
    assert len(lines) == 4
    assert_one_line_each(lines)
    assert {line.split(":", 1)[0] for line in lines} == {
        "SFS_CLEANUP_SHARE_IDS",
        "SFS_CLEANUP_RATE_LIMIT",
        "SFS_CLEANUP_STATUSES",
        "SFS_CLEANUP_REDIS_URL",
    }


def test_two_auth_modes_at_once_is_one_line_naming_the_variables() -> None:
    lines = problems(auth_token="tok", access_key="AK", secret_key="SK")
    assert len(lines) == 1
    assert_one_line_each(lines)
    assert "exactly one" in lines[0]
    assert "SFS_CLEANUP_AUTH_TOKEN" in lines[0]
    assert "SFS_CLEANUP_ACCESS_KEY" in lines[0]


def test_half_configured_iam_login_is_one_line_naming_the_variables() -> None:
    lines = problems(iam_user="alice", iam_password="pw")
    assert len(lines) == 1
    assert_one_line_each(lines)
    assert "SFS_CLEANUP_IAM_ENDPOINT" in lines[0]
    assert "SFS_CLEANUP_IAM_DOMAIN" in lines[0]


def test_access_key_without_secret_key_is_refused() -> None:
    lines = problems(access_key="AK")
    assert len(lines) == 1
    assert "SECRET_KEY" in lines[0]


def test_visibility_timeout_shorter_than_job_time_limit_is_one_line_naming_the_variable() -> None:
    lines = problems(visibility_timeout_s="1000", job_time_limit_s="1800")
    assert len(lines) == 1
    assert_one_line_each(lines)
    assert "SFS_CLEANUP_VISIBILITY_TIMEOUT_S" in lines[0]
    assert "SFS_CLEANUP_JOB_TIME_LIMIT_S" in lines[0]


def test_visibility_timeout_must_exceed_the_job_time_limit_by_a_margin() -> None:
    # Equal is not enough: a job that runs to its limit would be redelivered while still running.
    lines = problems(visibility_timeout_s="1800", job_time_limit_s="1800")
    assert len(lines) == 1
    assert "VISIBILITY_TIMEOUT_S" in lines[0]
    assert load_settings(visibility_timeout_s=1860, job_time_limit_s=1800).visibility_timeout_s == 1860


def test_consistency_problems_are_reported_together() -> None:
    lines = problems(auth_token="tok", access_key="AK", secret_key="SK", iam_user="alice", visibility_timeout_s="100")
    assert len(lines) == 3
    assert_one_line_each(lines)
    joined = "\n".join(lines)
    assert "exactly one" in joined
    assert "IAM" in joined
    assert "VISIBILITY_TIMEOUT_S" in joined


def test_settings_error_prints_every_line() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(rate_limit=-1, list_page_size=0)
    text = str(info.value)
    for line in info.value.lines:
        assert line in text


# --- Variables no setting has --------------------------------------------------------------------


def test_a_misspelt_variable_is_refused_with_the_closest_name() -> None:
    assert problems(rate_limt="5") == ["SFS_CLEANUP_RATE_LIMT is not a setting: did you mean SFS_CLEANUP_RATE_LIMIT?"]


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        # A cap or a protection list silently ignored would widen what a run deletes.
        ("SFS_CLEANUP_MAX_DELETION", "SFS_CLEANUP_MAX_DELETIONS"),
        ("SFS_CLEANUP_PROTECTED_SHARES", "SFS_CLEANUP_PROTECTED_SHARE_IDS"),
        ("SFS_CLEANUP_PROTECT_TASK_IDS", "SFS_CLEANUP_PROTECTED_TASK_IDS"),
        ("SFS_CLEANUP_SCHEDULE_TZ", "SFS_CLEANUP_SCHEDULE_TIMEZONE"),
        ("sfs_cleanup_older_then", "SFS_CLEANUP_OLDER_THAN"),  # read case-insensitively, so checked so
    ],
)
def test_typos_of_guard_rails_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, meant: str) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert info.value.lines == [f"{name} is not a setting: did you mean {meant}?"]


def test_a_name_like_no_setting_points_to_the_table() -> None:
    [line] = problems(flux_capacitor="on")
    assert line == "SFS_CLEANUP_FLUX_CAPACITOR is not a setting (docs/settings.md lists every setting)"


def test_unknown_names_are_reported_with_the_other_problems_first() -> None:
    lines = problems(max_deletion="10", rate_limit="-1")
    assert lines == [
        "SFS_CLEANUP_MAX_DELETION is not a setting: did you mean SFS_CLEANUP_MAX_DELETIONS?",
        "SFS_CLEANUP_RATE_LIMIT: Input should be greater than 0",
    ]


def test_an_unknown_name_never_shows_its_value() -> None:
    lines = problems(secret_ky=SECRETS[4], auth_tokn=SECRETS[0])
    assert len(lines) == 2
    for line in lines:
        assert SECRETS[4] not in line and SECRETS[0] not in line


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SFS_CLEANUP_REDIS_SERVICE_HOST", "10.96.0.7"),
        ("SFS_CLEANUP_REDIS_PORT_6379_TCP_ADDR", "10.96.0.7"),
        ("SFS_CLEANUP_FLOWER_PORT", "tcp://10.96.0.8:5555"),
    ],
)
def test_kubernetes_service_links_are_named_as_such(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    [line] = info.value.lines
    assert line.startswith(f"{name} is not a setting (a Kubernetes service link?") and "enableServiceLinks" in line


def test_a_port_typo_is_still_a_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    # Named like a service link, but its value is a port, not tcp://address:port.
    monkeypatch.setenv("SFS_CLEANUP_METRIC_PORT", "9100")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert info.value.lines == ["SFS_CLEANUP_METRIC_PORT is not a setting: did you mean SFS_CLEANUP_METRICS_PORT?"]


def test_the_allow_list_names_only_variables_the_repository_sets() -> None:
    # Each name is allowed because something sets it on purpose: one that nothing uses any more
    # would only hide a future typo.
    sources = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and p.name != "envnames.py"]
    for name in NOT_SETTINGS:
        assert any(name in p.read_text(encoding="utf-8") for p in sources), name
        assert name not in {f"SFS_CLEANUP_{field.upper()}" for field in Settings.model_fields}


def test_allowed_names_do_not_stop_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NOT_SETTINGS:
        monkeypatch.setenv(name, "redis://127.0.0.1:1/0")
    assert load_settings().rate_limit == 20.0


def test_a_misspelt_name_in_dotenv_is_refused_saying_where(clean_env: Path) -> None:
    (clean_env / ".env").write_text("OTHER_TOOL_TOKEN=abc\nSFS_CLEANUP_PROTECTED_TASKS=t-1\n", encoding="utf-8")
    assert problems() == [
        "SFS_CLEANUP_PROTECTED_TASKS in .env is not a setting: did you mean SFS_CLEANUP_PROTECTED_TASK_IDS?"
    ]
    # Settings read with no .env do not look at it.
    assert load_settings(_env_file=None).protected_task_ids == []


def test_a_name_in_both_the_environment_and_dotenv_is_reported_once(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text("SFS_CLEANUP_RATE_LIMT=7\n", encoding="utf-8")
    monkeypatch.setenv("SFS_CLEANUP_RATE_LIMT", "9")
    assert problems() == ["SFS_CLEANUP_RATE_LIMT is not a setting: did you mean SFS_CLEANUP_RATE_LIMIT?"]


def test_process_entry_points_refuse_an_unknown_name_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SFS_CLEANUP_MAX_DELETION", "100")
    with pytest.raises(SystemExit) as info:
        load_settings_or_exit()
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: SFS_CLEANUP_MAX_DELETION is not a setting: did you mean SFS_CLEANUP_MAX_DELETIONS?\n"
    )


# --- The schedule's cron expression and time zone -----------------------------------------------


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("0 25 * * *", "hour '25': Invalid end range: 25 > 23"),
        ("0 2 * *", "want 5 fields"),
        ("*/0 * * * *", "minute '*/0'"),
        ("*/ * * * *", "minute '*/' is not a cron field"),  # Celery raises a non-ValueError here
        ("1-2-3 * * * *", "minute '1-2-3' is not a cron field"),  # Celery would read 1-2
        ("jan 2 * * *", "minute 'jan' is not a cron field"),  # Celery would accept it
        ("0 2 31 2 *", "never occurs"),
        ("0 2 * * 8", "day of week '8'"),
    ],
)
def test_a_bad_cron_expression_is_one_line_naming_the_setting(cron: str, says: str) -> None:
    [line] = problems(schedule_cron=cron)
    assert line.startswith(f"SFS_CLEANUP_SCHEDULE_CRON: cron {cron!r}: "), line
    assert says in line, line


@pytest.mark.parametrize("cron", ["0 2 * * *", "*/15 6-18 * * mon-fri", "30 3 1,15 jan-jun 0", "0 0 29 2 *"])
def test_good_cron_expressions_are_what_beat_runs(monkeypatch: pytest.MonkeyPatch, cron: str) -> None:
    from celery.schedules import crontab

    from scheduler.cron import cron_schedule

    monkeypatch.setenv("SFS_CLEANUP_SCHEDULE_CRON", cron)
    assert load_settings().schedule_cron == cron
    minute, hour, day, month, weekday = cron.split()
    expected = crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday)
    assert cron_schedule(cron, "UTC") == expected


@pytest.mark.parametrize(
    ("zone", "says"),
    [
        ("Europe/Berln", "; did you mean Europe/Berlin?"),
        ("utc", "; did you mean UTC?"),
        ("Mars/Olympus", "(an IANA name such as Europe/Berlin)"),
        ("../etc/passwd", "(an IANA name such as Europe/Berlin)"),
        ("Europe", "(an IANA name such as Europe/Berlin)"),
    ],
)
def test_an_unknown_time_zone_is_one_line_naming_the_setting(zone: str, says: str) -> None:
    [line] = problems(schedule_timezone=zone)
    assert line.startswith(f"SFS_CLEANUP_SCHEDULE_TIMEZONE: unknown time zone {zone!r}"), line
    assert line.endswith(says), line


def test_a_known_time_zone_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFS_CLEANUP_SCHEDULE_TIMEZONE", "Asia/Shanghai")
    assert load_settings().schedule_timezone == "Asia/Shanghai"


# --- Secrets -----------------------------------------------------------------------------------


def _secret_settings() -> list[Settings]:
    return [
        load_settings(auth_token=SECRETS[0], flower_basic_auth=f"admin:{SECRETS[1]}", security_token=SECRETS[2]),
        load_settings(iam_endpoint="https://iam.example", iam_user="u", iam_password=SECRETS[3], iam_domain="d"),
        load_settings(access_key="AK", secret_key=SECRETS[4]),
    ]


def test_secrets_never_appear_in_repr_str_or_json() -> None:
    for settings in _secret_settings():
        for text in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump(mode="json"))):
            for secret in SECRETS:
                assert secret not in text


def test_secrets_are_still_usable() -> None:
    token_settings = _secret_settings()[0]
    assert token_settings.auth_token is not None
    assert token_settings.auth_token.get_secret_value() == SECRETS[0]


def test_secrets_never_appear_in_settings_errors() -> None:
    lines = problems(
        auth_token=SECRETS[0], access_key="AK", secret_key=SECRETS[4], iam_password=SECRETS[3], rate_limit="-1"
    )
    for line in lines:
        for secret in SECRETS:
            assert secret not in line


# --- .env --------------------------------------------------------------------------------------


def test_dotenv_file_is_read(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "SFS_CLEANUP_RATE_LIMIT=7\nSFS_CLEANUP_SHARE_IDS=s-1, s-2\nSFS_CLEANUP_AUTH_TOKEN=from-dotenv\n",
        encoding="utf-8",
    )
    s = load_settings()
    assert s.rate_limit == 7.0
    assert s.share_ids == ["s-1", "s-2"]
    assert s.auth_mode == "token"


def test_unrelated_keys_in_dotenv_do_not_break_start_up(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "# shared with other tools\nDATABASE_URL=postgres://x\nOTHER_TOOL_TOKEN=abc\nSFS_CLEANUP_BATCH_SIZE=50\n",
        encoding="utf-8",
    )
    assert load_settings().batch_size == 50


def test_environment_overrides_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("SFS_CLEANUP_RATE_LIMIT=7\n", encoding="utf-8")
    monkeypatch.setenv("SFS_CLEANUP_RATE_LIMIT", "9")
    assert load_settings().rate_limit == 9.0


def test_problems_in_dotenv_name_the_variable(clean_env: Path) -> None:
    (clean_env / ".env").write_text("SFS_CLEANUP_RATE_LIMIT=-3\n", encoding="utf-8")
    assert problems() == ["SFS_CLEANUP_RATE_LIMIT: Input should be greater than 0"]


# --- require_api -------------------------------------------------------------------------------


def test_require_api_lists_everything_missing() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings().require_api()
    lines = info.value.lines
    assert len(lines) == 3
    assert_one_line_each(lines)
    assert [line.split(":", 1)[0] for line in lines] == [
        "SFS_CLEANUP_API_ENDPOINT",
        "SFS_CLEANUP_PROJECT_ID",
        "SFS_CLEANUP_AUTH_TOKEN",
    ]


def test_require_api_lists_only_what_is_missing() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(api_endpoint="http://127.0.0.1:1", auth_token="t").require_api()
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith("SFS_CLEANUP_PROJECT_ID: ")


def test_require_api_passes_when_complete() -> None:
    load_settings(api_endpoint="http://127.0.0.1:1", project_id="0" * 32, auth_token="t").require_api()


# --- The CLI, as a user runs it ----------------------------------------------------------------


def _run_check(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SFS_CLEANUP_") and k != "COLUMNS"}
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "check"],
        env={**base, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_reports_a_bad_setting_as_one_line_and_exit_code_2(clean_env: Path) -> None:
    result = _run_check(clean_env, {"SFS_CLEANUP_RATE_LIMIT": "-1"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: SFS_CLEANUP_RATE_LIMIT: ")


def test_cli_refuses_a_misspelt_variable_with_exit_code_2(clean_env: Path) -> None:
    result = _run_check(clean_env, {"SFS_CLEANUP_RATE_LIMT": "5"})
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: SFS_CLEANUP_RATE_LIMT is not a setting: did you mean SFS_CLEANUP_RATE_LIMIT?\n"


def test_cli_keeps_each_long_problem_on_one_line(clean_env: Path) -> None:
    # Two consistency problems whose lines are longer than 80 columns: a log reader (or grep)
    # must see two lines, each starting with "error: ", however narrow the terminal.
    result = _run_check(
        clean_env,
        {
            "SFS_CLEANUP_VISIBILITY_TIMEOUT_S": "100",
            "SFS_CLEANUP_AUTH_TOKEN": "t",
            "SFS_CLEANUP_ACCESS_KEY": "AK",
            "SFS_CLEANUP_SECRET_KEY": "SK",
        },
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, result.stderr
    assert all(line.startswith("error: ") for line in lines), result.stderr


# --- Durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("30s", timedelta(seconds=30)),
        ("1w", timedelta(weeks=1)),
        ("1w2d", timedelta(days=9)),
        ("1d12h", timedelta(hours=36)),
        ("1.5h", timedelta(minutes=90)),
        (" 7D ", timedelta(days=7)),
        ("1w 2d", timedelta(days=9)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration_good(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "7", "d", "7x", "-1d", "7d!", "a week", "7 days", "1.d", "P7D"])
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like 7d"):
        parse_duration(text)
