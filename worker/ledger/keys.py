"""The Redis key layout, in one place.

Every key of a run carries the run ID in braces (``sfs:run:{RUN}:...``), which is also a Redis
Cluster hash tag: all keys of a run live in one slot, so the Lua scripts that touch several of
them stay atomic on a cluster too.

=================================  ========  ====================================================
key                                type      holds
=================================  ========  ====================================================
``P:runs``                         zset      run IDs scored by creation time (newest last)
``P:runs:active``                  zset      runs not yet over (planning, held, running, stopping), by
                                             creation time: what the reconciler walks
``P:run:{R}``                      hash      the run: status, policy, totals, counters ``n:<outcome>``,
                                             ``attempts``, ``retries``, ``throttled``, ``finals``; the
                                             hash chain's entries ``chain_n`` and, once sealed, ``chain_head``
``P:run:{R}:plan``                 hash      the frozen plan: batch number -> ``share_id|t1,t2,...``
``P:run:{R}:open``                 set       batch numbers that still have tasks without an outcome
``P:run:{R}:touch``                hash      batch number -> last dispatch or lease renewal (epoch s)
``P:run:{R}:lease:{N}``            string    the job working on batch N (expires unless renewed)
``P:run:{R}:out:{N}``              hash      task ID -> its one final outcome (JSON), written once
``P:run:{R}:att:{N}``              hash      task ID -> every attempt, one JSON object per line
                                             (each record ends with its chain position ``"q"``)
``P:run:{R}:chain``                hash      batch number -> its hash chain's state ``head:count`` (``chain``)
``P:run:{R}:z``                    hash      batch number -> the batch's outcomes and attempts once the run
                                             is over and the batch compacted: zlib of ``compact`` rows
``P:run:{R}:rejected``             list      refused input (JSON: source, line, reason, raw)
``P:run:{R}:rejected:done``        set       tokens of the writes of refused input (a repeat stores nothing)
``P:run:{R}:rps``                  hash      epoch second -> API requests sent (rate compliance)
``P:run:{R}:badshares``            hash      share ID -> the answer that showed it missing
``P:run:{R}:deliv``                hash      batch number -> ``deliveries:pending`` (jobs lost in a row)
``P:protect:tasks`` / ``:shares``  set       live protection lists, read at delete time
``P:layout``                       string    the key layout's version (``worker.ledger.layout``)
``P:events``                       stream    run lifecycle and refused triggers (capped)
``P:trigger:{key}``                string    the run that claimed a trigger's idempotency key
``P:rl:...``                       string    the fleet-wide rate limiter (see ``ratelimit``)
``P:metrics:api``                  hash      API latency buckets and answers, fleet-wide (``apimetrics``)
``P:workers``                      zset      worker processes (``hostname:pid``) by last heartbeat
``P:notify:{E|T}``                 string    event E's notification to target T: ``claimed:<token>`` while
                                             one scheduler sends it, then ``sent:<time>`` or ``gave_up``
``P:notify:{E|T}:tries``           string    failed passes of that notification (bounded)
``P:notify:since:{T}``             string    when target T was first configured (older run ends are not sent)
``P:notify:schedule-on``           string    when the reconciler first saw the schedule enabled
``P:archive:pending``              zset      ended runs whose bundle is not yet in the archive target, by end
                                             time (their keys get no EXPIRE until it is: ``scheduler.archive``)
``P:archive:runs``                 hash      run ID -> where its bundle is archived, its digest and summary
                                             (never expires: lists runs whose keys are gone)
``P:archive:retry``                hash      run ID -> ``tries|next try (epoch s)|first failure`` after a failure
``P:archive:stats``                hash      ``failures``, ``last_failure_at``, ``last_success_at``, ``last_error``
``P:archive:lock``                 string    the one scheduler archiving now (a redis-py lock)
=================================  ========  ====================================================

Small per-batch hashes (at most ``batch_size`` fields) keep Redis's compact listpack encoding
where values are short while a run goes on; when it ends each batch's ``out``/``att`` pair is
folded into one zlib value in ``z`` (:mod:`worker.ledger.compact`), about 9 MB per 100,000 tasks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "sfs"

    @property
    def runs(self) -> str:
        return f"{self.prefix}:runs"

    @property
    def active_runs(self) -> str:
        return f"{self.prefix}:runs:active"

    @property
    def layout(self) -> str:
        return f"{self.prefix}:layout"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def protected_tasks(self) -> str:
        return f"{self.prefix}:protect:tasks"

    @property
    def protected_shares(self) -> str:
        return f"{self.prefix}:protect:shares"

    @property
    def api_metrics(self) -> str:
        return f"{self.prefix}:metrics:api"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def trigger(self, idempotency_key: str) -> str:
        return f"{self.prefix}:trigger:{idempotency_key}"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}"

    def plan(self, run_id: str) -> str:
        return f"{self.run(run_id)}:plan"

    def open_batches(self, run_id: str) -> str:
        return f"{self.run(run_id)}:open"

    def touch(self, run_id: str) -> str:
        return f"{self.run(run_id)}:touch"

    def lease(self, run_id: str, batch: int) -> str:
        return f"{self.run(run_id)}:lease:{batch}"

    def outcomes(self, run_id: str, batch: int) -> str:
        return f"{self.run(run_id)}:out:{batch}"

    def attempts(self, run_id: str, batch: int) -> str:
        return f"{self.run(run_id)}:att:{batch}"

    def chain(self, run_id: str) -> str:
        return f"{self.run(run_id)}:chain"

    def compacted(self, run_id: str) -> str:
        return f"{self.run(run_id)}:z"

    def rejected(self, run_id: str) -> str:
        return f"{self.run(run_id)}:rejected"

    def rejected_done(self, run_id: str) -> str:
        return f"{self.run(run_id)}:rejected:done"

    def rps(self, run_id: str) -> str:
        return f"{self.run(run_id)}:rps"

    def bad_shares(self, run_id: str) -> str:
        return f"{self.run(run_id)}:badshares"

    def deliveries(self, run_id: str) -> str:
        return f"{self.run(run_id)}:deliv"

    def run_pattern(self, run_id: str) -> str:
        return f"{self.run(run_id)}*"

    # --- Notifications (scheduler.notify): the hash tag keeps a claim and its tries in one slot --
    def notify(self, event_id: str, target: str) -> str:
        return f"{self.prefix}:notify:{{{event_id}|{target}}}"

    def notify_tries(self, event_id: str, target: str) -> str:
        return f"{self.notify(event_id, target)}:tries"

    def notify_since(self, target: str) -> str:
        return f"{self.prefix}:notify:since:{target}"

    @property
    def notify_schedule_on(self) -> str:
        return f"{self.prefix}:notify:schedule-on"

    # --- The archive (scheduler.archive) --------------------------------------------------
    @property
    def archive_pending(self) -> str:
        return f"{self.prefix}:archive:pending"

    @property
    def archived(self) -> str:
        return f"{self.prefix}:archive:runs"

    @property
    def archive_retry(self) -> str:
        return f"{self.prefix}:archive:retry"

    @property
    def archive_stats(self) -> str:
        return f"{self.prefix}:archive:stats"

    @property
    def archive_lock(self) -> str:
        return f"{self.prefix}:archive:lock"
