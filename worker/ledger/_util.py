"""Small helpers every part of the ledger shares: Redis values in and out, timestamps, scripts."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import resources
from typing import Any


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def load_script(name: str) -> str:
    return (resources.files("worker.ledger.lua") / name).read_text()


def decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_field(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"), default=str)
    if hasattr(value, "__dataclass_fields__"):
        return json.dumps(asdict(value), default=str)
    return str(value)
