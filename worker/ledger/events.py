"""The ledger's event stream: run lifecycle and refused triggers, capped."""

from __future__ import annotations

import time
from typing import Any

from worker.ledger._base import LedgerBase
from worker.ledger._util import as_field, decode, iso


class EventLog(LedgerBase):
    def event(self, kind: str, **fields: Any) -> None:
        data = {"kind": kind, "at": iso(time.time())} | {k: as_field(v) for k, v in fields.items()}
        self.redis.xadd(self.keys.events, data, maxlen=100_000, approximate=True)

    def events(self, count: int = 100, kind: str | None = None) -> list[dict[str, str]]:
        rows = []
        for _id, raw in self.redis.xrevrange(self.keys.events, count=count * (5 if kind else 1)):
            row = {decode(k): decode(v) for k, v in raw.items()}
            if kind is None or row.get("kind") == kind:
                rows.append(row)
        return rows[:count]
