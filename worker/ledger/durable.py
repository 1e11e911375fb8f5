"""Replica acknowledgement of ledger writes: ``WAIT`` after a write-ahead record or a final outcome.

Redis replicates asynchronously: a failover promotes a replica that may lack the last writes the
primary acknowledged. With ``min_replicas`` > 0 a write-ahead record counts (and its DELETE is
sent) only once that many replicas hold it, and a flush of outcomes counts only then; fewer within
``timeout_ms`` raises :class:`NotReplicatedError`, a ``redis.RedisError``, so every caller's
existing "Redis refused the write" path applies: the DELETE is not sent, the outcomes stay queued.

``WAIT`` counts the writes of the connection it runs on. The gate's pipeline of script calls
(``OutcomeStore.gate``) ends with its ``WAIT``, on the same connection. The
outcome buffer writes in a MULTI/EXEC pipeline, which cannot hold a blocking WAIT, so
:func:`confirm` waits behind a ``PUBLISH`` on a connection of its own: the primary replicates in
one ordered stream, and a replica that acknowledged the ``PUBLISH`` (replicated, stores nothing)
holds every write acknowledged before it. If a failover happened between the write and that
``PUBLISH`` (seconds, against the microseconds between the two calls), the ``PUBLISH`` reaches the
new primary and would confirm a write it lacks: the buffer's outcomes are then rebuilt by the next
delivery of their batch (a task with no final outcome is tried again; see docs/deploy.md).

What this does not give: a write acknowledged by fewer replicas is still on the primary (WAIT
does not roll back), and a replica that acknowledged may still lose it if it dies in the same
failover. See docs/deploy.md, "Redis high availability".
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

#: Nobody subscribes: the PUBLISH is only a replicated marker for WAIT.
PROBE_CHANNEL = "sfs-cleanup:replication-probe"


@dataclass(frozen=True)
class Durability:
    """How many replicas must acknowledge a ledger write, and for how long to wait (0: off)."""

    min_replicas: int = 0
    timeout_ms: int = 1000


class NotReplicatedError(redis.RedisError):  # type: ignore[misc]  # redis-py's errors are untyped
    """Fewer replicas than required acknowledged the write in time."""


def require(acknowledged: int | None, durability: Durability) -> None:
    """Raise :class:`NotReplicatedError` if fewer replicas than required acknowledged."""
    if acknowledged is not None and acknowledged < durability.min_replicas:
        raise NotReplicatedError(
            f"{acknowledged} of {durability.min_replicas} required replicas acknowledged "
            f"within {durability.timeout_ms} ms"
        )


def confirm(client: redis.Redis, durability: Durability) -> None:
    """Return once ``durability.min_replicas`` replicas hold every write this process made so far."""
    if durability.min_replicas <= 0:
        return
    pipe = client.pipeline(transaction=False)
    pipe.publish(PROBE_CHANNEL, "")
    pipe.execute_command("WAIT", durability.min_replicas, durability.timeout_ms)
    _, acknowledged = pipe.execute()
    require(int(acknowledged), durability)
