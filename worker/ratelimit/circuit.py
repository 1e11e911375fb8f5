"""The 5xx circuit's states, as the Lua scripts store them in the limiter hash (field ``cs``)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CircuitState"]


class CircuitState(IntEnum):
    """The circuit as stored in Redis (``cs``)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")
