"""deploy/env.example: every setting documented, Compose-safe values, valid settings, placeholders only."""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

import pytest

from tests.deploy.files import ENV_EXAMPLE, SECRET_SETTINGS, SETTING_NAMES, settings_from
from worker.settings import ENV_PREFIX, SettingsError

_ASSIGNMENT = re.compile(r"(?P<comment># )?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)")


@functools.cache
def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(active, commented-out) assignments of deploy/env.example."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _ASSIGNMENT.fullmatch(line)
        if match:
            target = commented if match["comment"] else active
            assert match["name"] not in active and match["name"] not in commented, f"{match['name']} twice"
            target[match["name"]] = match["value"]
    return active, commented


def test_env_example_documents_every_setting() -> None:
    active, commented = env_example()
    documented = set(active) | set(commented)
    assert SETTING_NAMES - documented == set(), "settings missing from deploy/env.example"
    unknown = {name for name in documented if name.startswith(ENV_PREFIX)} - SETTING_NAMES
    assert not unknown, f"deploy/env.example names settings that do not exist: {unknown}"
    assert {name for name in documented if not name.startswith(ENV_PREFIX)} == {"REDIS_PASSWORD"}


def test_env_example_values_are_compose_safe() -> None:
    active, commented = env_example()
    for name, value in {**active, **commented}.items():
        assert "$" not in value, f"{name}: Compose would interpolate '$'"
        assert not value.startswith(("'", '"')), f"{name}: no quotes (Compose and Kubernetes differ on them)"
        assert value == value.strip(), f"{name}: stray spaces"


def test_env_example_active_values_are_valid_settings() -> None:
    active, _ = env_example()
    settings = settings_from(active)
    assert settings.auth_mode == "token"
    assert settings.schedule_enabled is False, "an unreviewed copy must not purge on a schedule"


def test_env_example_commented_values_are_valid_too() -> None:
    active, commented = env_example()
    for name, value in commented.items():
        try:
            settings_from({**active, name: value})
        except SettingsError as exc:
            # Cross-field problems (naming several variables) are expected with one line uncommented.
            field_errors = [
                line for line in exc.lines if line.startswith(f"{name}:") and line.count("SFS_CLEANUP_") == 1
            ]
            assert not field_errors, f"{name}={value}: {field_errors}"


@pytest.mark.parametrize("mode", ["iam", "aksk"])
def test_env_example_other_auth_modes_are_complete(mode: str) -> None:
    active, commented = env_example()
    groups = {
        "iam": ("IAM_ENDPOINT", "IAM_USER", "IAM_PASSWORD", "IAM_DOMAIN", "IAM_TOKEN_RENEW_BEFORE_S"),
        "aksk": ("ACCESS_KEY", "SECRET_KEY", "SECURITY_TOKEN"),
    }
    values = {name: value for name, value in active.items() if name != ENV_PREFIX + "AUTH_TOKEN"}
    values |= {ENV_PREFIX + name: commented[ENV_PREFIX + name] for name in groups[mode]}
    assert settings_from(values).auth_mode == mode


def test_env_example_redis_password_matches_the_url() -> None:
    active, _ = env_example()
    url = urlsplit(active[ENV_PREFIX + "REDIS_URL"])
    assert url.password == active["REDIS_PASSWORD"]
    assert url.hostname == "redis", "in Compose, Redis is the service named redis"


def test_env_example_holds_only_placeholders() -> None:
    active, commented = env_example()
    for name in SECRET_SETTINGS | {"REDIS_PASSWORD"}:
        for values in (active, commented):
            if name in values:
                assert re.search("change-?me", values[name], re.I), f"{name} must be an obvious placeholder"
