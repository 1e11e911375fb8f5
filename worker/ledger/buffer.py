"""Ledger writes buffered into pipelines, never dropped while Redis is away."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any

import redis
import structlog

from worker.ledger.audit import Audit
from worker.ledger.durable import confirm
from worker.ledger.outcomes import RecordItem
from worker.ledger.records import Attempt, Batch, FinalOutcome


class RecordBuffer:
    """Ledger writes queued and sent in pipelines: one Redis round trip for many tasks.

    Outcomes are flushed every ``flush_s`` seconds, when ``max_items`` are queued, and when the
    job ends. A DELETE never waits on this buffer: its write-ahead intent goes through
    :meth:`Audit.gate` first, so a worker dying inside the window loses only the *answer* of a
    request the audit already knows was sent (the task stays without a final outcome, and its
    next delivery settles it; see "our delete, our record" in :mod:`worker.purge`).
    ``flush_s=0`` writes each record at once.

    No Redis error drops a record: not a lost connection, not a refusal (out of memory,
    READONLY after a failover, MISCONF). Records that could not be written stay queued, in
    order, and are sent once Redis takes writes again; :meth:`close` waits for that up to
    ``retry_s``. Every ledger write is idempotent (``record.lua``), so a pipeline sent again
    after a partial failure, or a command redis-py repeats after a lost reply, counts once.
    Records added after :meth:`close` (a request that was on the wire when its job left the
    batch) are written at once, with the same wait.
    """

    _FAILED = (redis.RedisError,)

    def __init__(
        self, audit: Audit, *, flush_s: float, max_items: int = 64, retry_s: float = 60.0, **record_args: Any
    ) -> None:
        self.audit = audit
        self.flush_s = flush_s
        self.max_items = max_items
        self.retry_s = retry_s
        self.record_args = record_args
        self.duplicates = 0
        self._items: list[tuple[Batch, str, Attempt | None, FinalOutcome | None, str]] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._warned_at = -math.inf
        self._thread: threading.Thread | None = None
        if flush_s > 0:
            self._thread = threading.Thread(target=self._loop, name="sfs-audit-flush", daemon=True)
            self._thread.start()

    def add(
        self,
        batch: Batch,
        task_id: str,
        *,
        attempt: Attempt | None = None,
        final: FinalOutcome | None = None,
        bump: str = "",
    ) -> None:
        with self._lock:
            self._items.append((batch, task_id, attempt, final, bump))
            closed = self._closed
            due = self._thread is None or len(self._items) >= self.max_items
        if closed:
            self._flush_until_written()
        elif due:
            with contextlib.suppress(*self._FAILED):
                self.flush()  # if Redis refuses, kept queued: the next flush (at the latest close) sends it

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except self._FAILED as exc:
                now = time.monotonic()
                if now - self._warned_at >= 10:  # once per outage, not once per tick
                    self._warned_at = now
                    structlog.get_logger(__name__).warning("audit flush deferred", error=str(exc)[:200])
            except Exception:  # the flusher must outlive any one bad pipeline
                structlog.get_logger(__name__).exception("audit flush failed")

    def flush(self) -> None:
        with self._send_lock:  # one pipeline at a time keeps each task's records in order
            with self._lock:
                items, self._items = self._items, []
            if not items:
                return
            try:
                results = self.audit.record_many(
                    [
                        RecordItem(batch, task_id, attempt, final, bump)
                        for batch, task_id, attempt, final, bump in items
                    ],
                    **self.record_args,
                )
            except BaseException:
                with self._lock:
                    self._items[:0] = items  # back in front, in order, for the next try
                raise
            for (batch, _, _, _, _), result in zip(items, results, strict=True):
                if int(result) == 2:
                    self.audit.on_run_over(batch.run_id)
                elif int(result) == -1:
                    self.duplicates += 1
            try:
                confirm(self.audit.redis, self.audit.durability)  # worker.ledger.durable
            except BaseException:
                with self._lock:
                    self._items[:0] = items  # too few replicas hold them: sent again (idempotent)
                raise

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        """Stop the flusher and write everything still queued (waiting up to ``retry_s`` for Redis)."""
        self._stop.set()
        with self._lock:
            self._closed = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._flush_until_written()

    def _flush_until_written(self) -> None:
        deadline = time.monotonic() + self.retry_s
        pause = 0.2
        while True:
            try:
                self.flush()
                return
            except self._FAILED:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(2.0, pause * 2)
