"""The API as the fleet sees it: latency and answers of every call, summed in Redis for the exporter.

Each process counts in memory (:meth:`ApiStats.observe` is a lock and a few dict increments, so
it may sit on the deletion path) and a daemon thread adds the counts to one Redis hash per fleet,
``{prefix}:metrics:api``, about once a second. ``sfs-cleanup metrics`` reads that hash, so one
scrape shows every worker process.

Hash fields (all label values are bounded, so the hash and the series stay small):

=============================  ================================================================
field                          holds
=============================  ================================================================
``n|OP|STATUS|CODE``           answers: OP in :data:`OPERATIONS`, STATUS the HTTP status or
                               ``none`` (no answer), CODE a known API error code, ``none`` or
                               ``other``
``b|OP|LE``                    calls whose latency fell in the bucket ending at LE (seconds, a
                               value of :data:`BUCKETS` or ``+Inf``); not cumulative
``s|OP``                       the sum of those latencies (seconds, a float)
``t|OP|STATUS|CODE|TARGET``    answers of a target's calls (a targets file), also counted in
                               ``n|...``; TARGET a name from that file, so bounded too
``f|TOKEN``                    ``SEQ TIME``: the last flush applied from one process (see below)
=============================  ================================================================

A flush is one Lua script on that one key, numbered per process: redis-py resends a command
whose reply was lost, and a flush whose outcome is unknown is sent again as it was, so the
script applies each number once and no answer is ever counted twice. A flush that fails (Redis
down, full, read-only) keeps its counts for the next one: metrics never stop a deletion.

The same thread keeps the fleet's heartbeat, ``{prefix}:workers``: a sorted set of
``hostname:pid`` scored by the time each worker process last wrote (every
:data:`HEARTBEAT_INTERVAL_S`); the exporter counts the members newer than 60 s.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import weakref
from bisect import bisect_left
from typing import Final, Literal

import redis
import structlog

from worker.api.answers import (
    _BUSY_CODES,
    _SHARE_MISSING_CODES,
    _THROTTLE_CODES,
    _TOKEN_RENEW_CODES,
    AUTH_HINTS,
    TASK_NOT_FOUND,
    ApiAnswer,
    normalise_code,
)
from worker.ledger.keys import Keys

log = structlog.get_logger(__name__)

Operation = Literal["delete", "show", "list"]
OPERATIONS: Final[tuple[Operation, ...]] = ("delete", "show", "list")
#: Upper bounds of the latency buckets, seconds: from a fast 202 to a client timeout.
BUCKETS: Final[tuple[float, ...]] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Error codes kept as label values; any other code is counted as ``other`` (bounded series).
KNOWN_CODES: Final[frozenset[str]] = frozenset(
    {
        TASK_NOT_FOUND,
        "SFS.TURBO.0001",  # a parameter the API refused
        "SFS.TURBO.0005",  # the API's own internal error (the 500s of a brownout)
        *_BUSY_CODES,
        *_SHARE_MISSING_CODES,
        *_TOKEN_RENEW_CODES,
        *_THROTTLE_CODES,
        *AUTH_HINTS,
    }
)
NO_VALUE: Final = "none"
OTHER: Final = "other"
FLUSH_INTERVAL_S: Final = 1.0
HEARTBEAT_INTERVAL_S: Final = 10.0
#: Heartbeats and flush numbers of processes silent this long are dropped (dead processes).
FORGET_AFTER_S: Final = 86400.0

_BUCKET_LABELS: Final = (*(repr(b) for b in BUCKETS), "+Inf")

# One key (the hash), so the script stays atomic on one slot should Redis ever be a cluster.
_FLUSH_LUA: Final = """
local last = redis.call('HGET', KEYS[1], ARGV[1])
if last and tonumber(string.match(last, '^%d+')) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
for i = 4, #ARGV, 2 do
  if string.byte(ARGV[i], 1) == 115 then  -- 's|OP': a sum of seconds
    redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
  else
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


def status_label(status: int) -> str:
    """The HTTP status as a label; ``none`` for no answer, ``other`` for a number no server sends."""
    if status == 0:
        return NO_VALUE
    return str(status) if 100 <= status <= 599 else OTHER


def code_label(code: str | None) -> str:
    if not code:
        return NO_VALUE
    code = normalise_code(code) or code
    return code if code in KNOWN_CODES else OTHER


def bucket_label(seconds: float) -> str:
    """The bucket a latency falls in: the first upper bound at or above it."""
    return _BUCKET_LABELS[bisect_left(BUCKETS, seconds)]


# Every live ApiStats, so a forked child can drop what it inherited (see _after_fork).
_instances: weakref.WeakSet[ApiStats] = weakref.WeakSet()


class ApiStats:
    """Counts of one process's API calls, added to the fleet's hash in Redis in the background."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "sfs",
        *,
        heartbeat_member: str | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        #: ``hostname:pid`` written to ``{prefix}:workers``; None: this process is not a worker.
        self.heartbeat_member = heartbeat_member
        self.flush_interval_s = flush_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self._script = client.register_script(_FLUSH_LUA)
        self._reset()
        _instances.add(self)

    def _reset(self) -> None:
        """Fresh state for this process (also after a fork: the parent's counts are the parent's)."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._counts: dict[str, float] = {}
        # A flush whose outcome is unknown, resent unchanged (same number) before anything new.
        self._pending: tuple[int, dict[str, float]] | None = None
        self._seq = 0
        # Unique per process start: a restarted container often reuses the same pid.
        self._token = f"{self.heartbeat_member or os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._last_heartbeat = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the hot path ---------------------------------------------------------------------
    def observe(self, op: Operation, answer: ApiAnswer, target: str | None = None) -> None:
        """Count one call: its answer (status, error code) and its latency, and with ``target``
        (a targets file's) its answer by target too. Never raises for Redis."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown API operation {op!r}: one of {OPERATIONS}")
        seconds = max(answer.latency_ms, 0.0) / 1000.0
        answer_field = f"n|{op}|{status_label(answer.status)}|{code_label(answer.error_code)}"
        bucket_field = f"b|{op}|{bucket_label(seconds)}"
        sum_field = f"s|{op}"
        with self._lock:
            counts = self._counts
            counts[answer_field] = counts.get(answer_field, 0) + 1
            if target is not None:
                target_field = "t" + answer_field[1:] + "|" + target
                counts[target_field] = counts.get(target_field, 0) + 1
            counts[bucket_field] = counts.get(bucket_field, 0) + 1
            counts[sum_field] = counts.get(sum_field, 0.0) + seconds
        if self._thread is None:
            self.start()

    # --- flushing -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the flush and heartbeat thread (once; observe starts it on first use)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="sfs-api-metrics", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            self.flush()

    def flush(self) -> bool:
        """Add what was counted to Redis now; False if Redis refused it (the counts are kept)."""
        with self._flush_lock:
            try:
                self._send()
            except redis.RedisError as exc:
                log.debug("API metrics not written; kept for the next flush", error=str(exc))
                return False
            return True

    def _send(self) -> None:
        now = time.time()
        for _ in range(2):  # a pending (unknown) flush first, then what was counted since
            if self._pending is None:
                with self._lock:
                    counts, self._counts = self._counts, {}
                if not counts:
                    break
                self._seq += 1
                self._pending = (self._seq, counts)
            seq, counts = self._pending
            args: list[str | int | float] = [f"f|{self._token}", seq, int(now)]
            for name, value in counts.items():
                args += [name, repr(value) if name.startswith("s|") else int(value)]
            self._script(keys=[self.keys.api_metrics], args=args)
            self._pending = None
        if self.heartbeat_member and now - self._last_heartbeat >= self.heartbeat_interval_s:
            self._heartbeat(now)

    def _heartbeat(self, now: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.workers, {self.heartbeat_member: now})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now - FORGET_AFTER_S)
        pipe.execute()
        if self._last_heartbeat == 0.0 or int(now) % 600 < self.heartbeat_interval_s:
            self._forget_old_flushes(now)  # rare: at start, then about every 10 minutes
        self._last_heartbeat = now

    def _forget_old_flushes(self, now: float) -> None:
        """Drop the flush numbers of processes silent for a day (dead), so the hash stays small."""
        stale = []
        for name, value in self.redis.hscan_iter(self.keys.api_metrics, match="f|*", count=500):
            _, _, when = _text(value).partition(" ")
            if when and float(when) < now - FORGET_AFTER_S:
                stale.append(name)
        if stale:
            self.redis.hdel(self.keys.api_metrics, *stale)

    def pending(self) -> dict[str, float]:
        """What is counted and not yet in Redis (for tests and debugging)."""
        with self._lock:
            merged = dict(self._counts)
        pending = self._pending
        if pending is not None:
            for name, value in pending[1].items():
                merged[name] = merged.get(name, 0) + value
        return merged

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and write what is left (best effort: Redis may be gone)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.flush()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _after_fork() -> None:
    # A child starts with the parent's counts and a thread that did not survive the fork:
    # counting them here too would double them, so the child begins empty.
    for stats in list(_instances):
        stats._reset()


os.register_at_fork(after_in_child=_after_fork)
