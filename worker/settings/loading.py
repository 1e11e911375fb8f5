"""Reading the settings: once, from the environment and ``.env``, every problem reported at once."""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from worker.settings.base import ENV_PREFIX, SettingsError
from worker.settings.model import Settings


def _format(error: ValidationError) -> list[str]:
    lines: list[str] = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        name = f"{ENV_PREFIX}{loc[0].upper()}" if loc else "settings"
        msg = item["msg"].removeprefix("Value error, ")
        if not loc:
            lines.extend(msg.split("; "))  # cross-field problems name their variables themselves
        else:
            lines.append(f"{name}: {msg}")
    return lines


def setting_names() -> frozenset[str]:
    """Every setting's variable name: ``SFS_CLEANUP_<FIELD>``."""
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def _unknown_variables(env_file: Any) -> list[str]:
    """Lines for ``SFS_CLEANUP_`` variables no setting has, in the environment and in the .env
    file these settings read (``env_file``: as ``Settings(_env_file=...)`` takes it)."""
    from pydantic_settings import DotEnvSettingsSource

    from worker.envnames import unknown_variables

    known = setting_names()
    lines = unknown_variables(os.environ, known, prefix=ENV_PREFIX)
    # Case kept, to quote names as written (the settings themselves read them case-insensitively).
    from_file = DotEnvSettingsSource(Settings, env_file=env_file, case_sensitive=True).env_vars
    in_env = {name.upper() for name in os.environ}  # the environment wins: report a name once
    dotenv_only = {name: value for name, value in from_file.items() if name.upper() not in in_env}
    return lines + unknown_variables(dotenv_only, known, prefix=ENV_PREFIX, where=" in .env")


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise :class:`SettingsError` listing every problem.

    A ``SFS_CLEANUP_`` variable that no setting has is one of them (``worker.envnames``): a
    misspelt cap or protection list must not leave a deleting run without it.
    """
    from pydantic_settings.sources import ENV_FILE_SENTINEL

    unknown = _unknown_variables(overrides.get("_env_file", ENV_FILE_SENTINEL))
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(unknown + _format(exc)) from None
    if unknown:
        raise SettingsError(unknown)
    return settings


def load_settings_or_exit() -> Settings:
    """For process entry points (``celery -A worker``): print every problem, one line each, and exit 2
    (unknown ``SFS_CLEANUP_`` variables too: see :func:`load_settings`)."""
    import sys

    try:
        return load_settings()
    except SettingsError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
