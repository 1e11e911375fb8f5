"""Batch leases: one job at a time works on a batch, and a job lost in a loop is noticed."""

from __future__ import annotations

from worker.ledger._util import decode
from worker.ledger.plans import PlanStore


class LeaseStore(PlanStore):
    def take_lease(self, run_id: str, number: int, holder: str, ttl_s: int) -> bool:
        """Claim a batch: free, or already held by this very holder (worker node + job ID).

        Re-entry matters when a pool child is killed (OOM, SIGKILL): Celery requeues the same
        message at once (``task_reject_on_worker_lost``), and its new delivery on the same node
        has the same holder, while the dead child's lease has not yet expired. Refusing it as
        "busy" would ack the job and strand the batch until the reconciler. Two live copies of
        one holder cannot run at once: the child that held it is dead, and a visibility-timeout
        redelivery comes only after the job's hard time limit (checked by the settings).
        """
        key = self.keys.lease(run_id, number)
        taken = self.redis.eval(
            "local cur = redis.call('GET', KEYS[1]) "
            "if cur == false or cur == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end "
            "return false",
            1,
            key,
            holder,
            ttl_s,
        )
        if taken:
            self.touch(run_id, number)
            return True
        return False

    def renew_lease(self, run_id: str, number: int, holder: str, ttl_s: int) -> bool:
        key = self.keys.lease(run_id, number)
        # Renew only our own lease: compare-and-expire in one step.
        renewed = self.redis.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 0",
            1,
            key,
            holder,
            ttl_s,
        )
        if renewed:
            self.touch(run_id, number)
        return bool(renewed)

    def release_lease(self, run_id: str, number: int, holder: str) -> None:
        self.redis.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1,
            self.keys.lease(run_id, number),
            holder,
        )

    def note_delivery(self, run_id: str, number: int, pending: int) -> int:
        """Count this job's delivery; return how many in a row found no fewer tasks pending.

        Called under the batch's lease, so one job at a time. A job that kills its process
        (out of memory, a crash) is handed back by Celery for ever; this count is what stops it.
        """
        key, field = self.keys.deliveries(run_id), str(number)
        raw = self.redis.hget(key, field)
        count, last = (int(x) for x in decode(raw).split(":")) if raw else (0, -1)
        count = count + 1 if 0 <= last <= pending else 1
        self.redis.hset(key, field, f"{count}:{pending}")
        return count

    def lease_holder(self, run_id: str, number: int) -> str | None:
        value = self.redis.get(self.keys.lease(run_id, number))
        return decode(value) if value is not None else None
