"""Temporary: re-exports worker.api.client (and worker.api.transport); removed at the end of the restructuring."""

from worker.api.client import (
    USER_AGENT,
    ApiError,
    ClientConfig,
    Pace,
    SfsTurboClient,
    ShareMissingError,
)
from worker.api.transport import (
    MAX_BODY_BYTES,
    TOO_LARGE,
)

__all__ = [
    "MAX_BODY_BYTES",
    "TOO_LARGE",
    "USER_AGENT",
    "ApiError",
    "ClientConfig",
    "Pace",
    "SfsTurboClient",
    "ShareMissingError",
]
