"""Small helpers every part of the ledger shares: Redis values in and out, timestamps, scripts."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import redis


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


def bytes_client(client: redis.Redis) -> redis.Redis:
    """The client itself, or one on the same server that answers bytes: compressed values are not text."""
    kwargs = client.connection_pool.connection_kwargs
    if not kwargs.get("decode_responses"):
        return client
    pool = client.connection_pool
    return redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class, **(kwargs | {"decode_responses": False})
        )
    )
