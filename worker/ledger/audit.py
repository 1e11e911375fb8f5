"""The ledger as one object: every part composed over one Redis, its scripts registered once."""

from __future__ import annotations

import redis

from worker.ledger._util import load_script
from worker.ledger.events import EventLog
from worker.ledger.freeze import PlanFreeze
from worker.ledger.keys import Keys
from worker.ledger.leases import LeaseStore
from worker.ledger.outcomes import OutcomeStore
from worker.ledger.plans import PlanStore
from worker.ledger.protection import ProtectionStore
from worker.ledger.queries import QueryStore
from worker.ledger.retention import Retention
from worker.ledger.runs import RunStore


class Audit(PlanFreeze, OutcomeStore, RunStore, EventLog, LeaseStore, QueryStore, PlanStore, ProtectionStore):
    """Ledger and audit operations on one Redis. Safe to share between threads."""

    def __init__(self, client: redis.Redis, *, prefix: str = "sfs", retention_s: int | Retention = 90 * 86400) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.retention = retention_s if isinstance(retention_s, Retention) else Retention.uniform(retention_s)
        self.retention_s = self.retention.longest_s  # the longest any run is kept
        self._record = client.register_script(load_script("record.lua"))
        self._freeze = client.register_script(load_script("freeze.lua"))
        self._stop = client.register_script(load_script("stop.lua"))
        self._release = client.register_script(load_script("release.lua"))
        self._abandon_stale = client.register_script(load_script("abandon_stale.lua"))
        self._gate = client.register_script(load_script("gate.lua"))
        self._add_rejected = client.register_script(load_script("rejected.lua"))
