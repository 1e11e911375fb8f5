"""Does Redis keep what it is given? AOF on and ``maxmemory-policy noeviction`` (``sfs-cleanup check``).

Read with ``CONFIG GET``; where the provider disables it (managed Redis often renames ``CONFIG``
away or denies it by ACL), with ``INFO``, which shows both; where neither answers, the check says
so and why rather than failing: the fleet runs there, it only cannot be verified from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import ResponseError

#: What a refused command's error line may quote of the server's answer.
_ERROR_CHARS = 120


@dataclass
class Durability:
    """What was found: ``None`` for a value that could not be read (``unchecked`` says why)."""

    appendonly: str | None = None
    maxmemory_policy: str | None = None
    read_with: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "appendonly": self.appendonly,
            "maxmemory_policy": self.maxmemory_policy,
            "read_with": self.read_with,
            "refused": self.refused,
        }


def read_durability(client: redis.Redis) -> Durability:
    """AOF and eviction policy of the server behind ``client``, with warnings for unsafe values.

    Only a refused command (``ResponseError``) is absorbed; a lost connection raises as usual.
    """
    result = Durability()
    refused = result.refused
    try:
        config = {name: _text(client.config_get(name).get(name)) for name in ("appendonly", "maxmemory-policy")}
    except ResponseError as exc:
        config = {}
        refused.append(f"CONFIG GET answered {_quote(exc)}")
    result.appendonly, result.maxmemory_policy = config.get("appendonly"), config.get("maxmemory-policy")
    if any(value is not None for value in config.values()):
        result.read_with.append("CONFIG GET")
    if result.appendonly is None or result.maxmemory_policy is None:
        try:
            info = client.info("persistence") | client.info("memory")
        except ResponseError as exc:
            refused.append(f"INFO answered {_quote(exc)}")
        else:
            aof = info.get("aof_enabled")
            before = (result.appendonly, result.maxmemory_policy)
            result.appendonly = result.appendonly or (None if aof is None else ("yes" if int(aof) else "no"))
            result.maxmemory_policy = result.maxmemory_policy or _text(info.get("maxmemory_policy"))
            if (result.appendonly, result.maxmemory_policy) != before:
                result.read_with.append("INFO")
    _judge(result, why="; ".join(refused) or "the server does not report it")
    return result


def _judge(result: Durability, why: str) -> None:
    """Warnings for unsafe values, and what could not be checked and why."""
    if result.appendonly is None:
        result.unchecked.append(
            f"cannot check that Redis AOF is on: {why} (managed Redis often disables CONFIG): "
            "check in the provider's console that AOF persistence is on"
        )
    elif result.appendonly != "yes":
        result.warnings.append(
            "Redis AOF is off (appendonly no): a Redis restart loses the runs, plans, audit and queued "
            "jobs written since the last snapshot; set appendonly yes"
        )
    if result.maxmemory_policy is None:
        result.unchecked.append(
            f"cannot check Redis maxmemory-policy: {why} (managed Redis often disables CONFIG): "
            "check in the provider's console that it is noeviction"
        )
    elif result.maxmemory_policy != "noeviction":
        result.warnings.append(
            f"Redis maxmemory-policy is {result.maxmemory_policy[:40]}, not noeviction: with memory full it "
            "drops keys, queued jobs and audit records among them; set maxmemory-policy noeviction"
        )


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _quote(exc: ResponseError) -> str:
    return repr(str(exc)[:_ERROR_CHARS])
