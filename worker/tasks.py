"""Thin Celery task wrappers; the work is in :mod:`worker.purge`.

Tasks have stable explicit names so other systems can send them by name, and their arguments
are IDs only (never credentials), so Flower and the broker show nothing secret.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Celery, Task, signals

from worker.jobnames import PURGE_BATCH, settings_of
from worker.logging import setup_process_logging
from worker.purge import BatchJob
from worker.runtime import close_runtime, get_runtime

log = structlog.get_logger(__name__)


def register(app: Celery) -> None:
    settings = settings_of(app)

    # shared=False: the task is a closure over this app's settings. Celery's default (shared)
    # would also add it to every other app built in the process, where it would answer for
    # another app's settings (and Celery warns of the duplicate name).
    @app.task(
        name=PURGE_BATCH,
        shared=False,
        bind=True,
        acks_late=True,
        max_retries=5,
        default_retry_delay=5,
        Strategy="worker.tasks:guarded_batch_strategy",
    )
    def purge_batch(self: Task, run_id: str, batch: int, share_id: str = "", tasks: int = 0) -> dict[str, Any]:
        """Delete the tasks of one plan batch (one share). Safe to deliver twice."""
        rt = get_runtime(settings)
        holder = f"{self.request.hostname or rt.worker_name}:{self.request.id}"
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        structlog.contextvars.bind_contextvars(run_id=run_id, batch=batch, redelivered=redelivered)
        result = BatchJob(rt, run_id, int(batch), holder).run()
        log.info("batch job ended", **result.as_dict())
        return result.as_dict()

    @signals.setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        setup_process_logging(settings)

    @signals.task_prerun.connect(weak=False)
    def _bind(task_id: str | None = None, task: Any = None, **_: Any) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(task_id=task_id, task_name=getattr(task, "name", None))

    @signals.task_postrun.connect(weak=False)
    def _unbind(**_: Any) -> None:
        structlog.contextvars.clear_contextvars()

    @signals.worker_process_shutdown.connect(weak=False)
    def _close(**_: Any) -> None:
        close_runtime()


def guarded_batch_strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """A malformed message on the deletion queue is acknowledged and recorded, not fatal to the worker."""
    from worker.envelope import guarded
    from worker.ledger import Audit
    from worker.runtime import redis_client

    settings = settings_of(app)

    def refused(name: str, message_id: str | None, problem: str) -> None:
        log.warning("job message refused", task=name, message_id=message_id, problem=problem)
        Audit(redis_client(settings), prefix=settings.key_prefix).event(
            "job_rejected", task=name, message_id=message_id or "", error=problem[:2000]
        )

    return guarded(refused, allow_eta=True)(task, app, consumer, **kwargs)
