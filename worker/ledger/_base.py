"""What every part of the ledger works on: one Redis, its key layout, and the ledger scripts."""

from __future__ import annotations

import redis
from redis.commands.core import Script

from worker.ledger.keys import Keys
from worker.ledger.retention import Retention
from worker.luascripts import LuaScripts


class LedgerBase:
    """The state the ledger's parts share; :class:`worker.ledger.audit.Audit` sets it up.

    Each part is a mixin over this base, so ``audit.xxx(...)`` reads as one object while each
    concern (runs, plans, leases, outcomes, ...) lives in its own module.
    """

    redis: redis.Redis
    raw_redis: redis.Redis  # the same server, answering bytes (compressed values)
    keys: Keys
    retention_s: int
    retention: Retention
    scripts: LuaScripts  # gate.lua and record.lua
    _freeze: Script
    _stop: Script
    _release: Script
    _abandon_stale: Script
    _compact: Script
    _expand: Script
    _add_rejected: Script

    def close_ledger(self, run_id: str) -> None:
        """When a run ends: compact its batches and seal its chain (:mod:`worker.ledger.chainaudit`)."""
