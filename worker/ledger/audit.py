"""The ledger as one object: every part composed over one Redis, its scripts registered once."""

from __future__ import annotations

import redis

from worker.ledger._util import bytes_client, load_script
from worker.ledger.chain import Chain
from worker.ledger.chainaudit import ChainAudit
from worker.ledger.events import EventLog
from worker.ledger.freeze import PlanFreeze
from worker.ledger.keys import Keys
from worker.ledger.leases import LeaseStore
from worker.ledger.outcomes import ChainCache, OutcomeStore
from worker.ledger.plans import PlanStore
from worker.ledger.protection import ProtectionStore
from worker.ledger.queries import QueryStore
from worker.ledger.records import OVER
from worker.ledger.retention import Retention
from worker.ledger.runs import RunStore
from worker.luascripts import LuaScripts


class Audit(
    PlanFreeze, OutcomeStore, RunStore, EventLog, LeaseStore, QueryStore, ChainAudit, PlanStore, ProtectionStore
):
    """Ledger and audit operations on one Redis. Safe to share between threads."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "sfs",
        retention_s: int | Retention = 90 * 86400,
        audit_key: bytes | None = None,
    ) -> None:
        self.redis = client
        self.raw_redis = bytes_client(client)
        self.keys = Keys(prefix)
        self.retention = retention_s if isinstance(retention_s, Retention) else Retention.uniform(retention_s)
        self.retention_s = self.retention.longest_s  # the longest any run is kept
        # The chain's key lives only in this process: never an argument to Redis (MONITOR, SLOWLOG).
        self.chain = Chain(audit_key)
        self.chains = ChainCache()
        # The deletion path's two scripts, sent without redis-py's per-command layers (worker.luascripts).
        self.scripts = LuaScripts(client, {"gate": load_script("gate.lua"), "record": load_script("record.lua")})
        self._freeze = client.register_script(load_script("freeze.lua"))
        self._stop = client.register_script(load_script("stop.lua"))
        self._release = client.register_script(load_script("release.lua"))
        self._abandon_stale = client.register_script(load_script("abandon_stale.lua"))
        self._add_rejected = client.register_script(load_script("rejected.lua"))
        self._compact = client.register_script(load_script("compact.lua"))
        self._expand = client.register_script(load_script("expand.lua"))

    def release_lease(self, run_id: str, number: int, holder: str) -> None:
        """Let a batch go; if its run is over, that batch can be compacted now (it was held when
        the run ended) and the run's head sealed again over its final state."""
        super().release_lease(run_id, number, holder)
        if self.status(run_id) in OVER:
            self.close_ledger(run_id)
