"""What every part of the settings shares: the variables' prefix, comma lists, the error."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic_settings import NoDecode

from worker.errors import ProblemsError

ENV_PREFIX = "SFS_CLEANUP_"

#: A list given as ``a,b,c`` in one variable (not as JSON).
CommaList = Annotated[list[str], NoDecode]


def split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SettingsError(ProblemsError):
    """Every settings problem, one line each, ready to print without a stack trace."""

    title = "invalid settings"
