"""Temporary: re-exports worker.ledger.keys; removed at the end of the restructuring."""

from worker.ledger.keys import Keys

__all__ = ["Keys"]
