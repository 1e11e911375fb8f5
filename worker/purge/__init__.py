"""One deletion job: the tasks of one plan batch (one share), deleted concurrently.

The job claims its batch with a lease, skips tasks that already have an outcome (so a job
delivered twice never sends a second DELETE for a finished task), re-reads the protection
lists, and then deletes each remaining task under the fleet-wide limiter, retrying by the
verdict of each answer. Every attempt and the one final outcome go to the audit.

The rules at the edges, each of which a test holds:

- **Stop means stop.** A thread waiting for its rate-limit slot wakes when the run stops or
  the job leaves its batch, and sends nothing.
- **Write-ahead.** No DELETE leaves before :meth:`Audit.gate` has recorded, in one atomic
  Redis step, that it is about to: and the gate writes only while the run is running, the
  lease is this job's and no live hold names the task or its share. A Redis that cannot take
  that write means the DELETE is not sent. A gate passed longer ago than ``STALE_GATE_S`` (the
  process was paused) is passed again before sending.
- **Checks fail closed.** A task that must be shown before its DELETE (bare manifest entries,
  explicit lists, replays, ``RECHECK_STATUS``) is deleted only after a show answered 200 with a
  task that passes the run's whole policy; a show that keeps failing ends the task ``failed``
  with reason ``recheck_failed``.
- **Our delete, our record.** A task found gone after an earlier DELETE of ours got no usable
  answer (no answer, a 5xx, an intent never completed) ends ``deleted``, confirmed by the later
  answer, with every request ID kept in its attempts.
- **One holder.** A job that cannot renew its lease stops sending at once.
"""

from worker.purge.job import BatchJob, is_finished_status
from worker.purge.state import CONFIRMED, RECHECK_FAILED, JobResult, JobState

__all__ = ["CONFIRMED", "RECHECK_FAILED", "BatchJob", "JobResult", "JobState", "is_finished_status"]
