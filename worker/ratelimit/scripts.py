"""The limiter's Lua scripts (``lua/``), as package data, and the answers of ``acquire.lua``.

Each script is sent with ``common.lua`` (shared helpers: the server's clock, the recovery curve,
the circuit) prepended, so that every script is one self-contained ``EVALSHA``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final

__all__ = ["GO", "HELD", "RESERVED", "SCRIPTS", "TOO_LONG", "script_source"]

SCRIPTS: Final = ("acquire", "throttled", "record", "state")

# Answers of acquire.lua (see the script's header).
GO: Final = 0
RESERVED: Final = 1
TOO_LONG: Final = 2
HELD: Final = 3


@cache
def script_source(name: str) -> str:
    """The full source of ``lua/{name}.lua``, ``common.lua`` first."""
    package = resources.files("worker.ratelimit.lua")
    common = (package / "common.lua").read_text(encoding="utf-8")
    return common + "\n" + (package / f"{name}.lua").read_text(encoding="utf-8")
