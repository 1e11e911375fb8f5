"""The Celery app: built from the settings, shared by workers, beat, Flower and the CLI.

Reliability choices (see the README's "How it works"):

* late acks, prefetch 1, and requeue when a pool child dies: a job is lost only if the queue
  loses its message, and the reconciler re-dispatches any batch that makes no progress;
* a visibility timeout longer than the longest job (checked by the settings at start-up), and
  a restore sweep every ``restore_interval_s`` so a job of a killed worker comes back after
  about ``visibility_timeout_s + restore_interval_s``;
* no result backend: the audit in Redis is the record of what happened.
"""

from __future__ import annotations

import functools

from celery import Celery
from kombu.entity import Queue

from worker.jobnames import CONTROL_QUEUE, DELETE_QUEUE, PURGE_BATCH, CleanupApp
from worker.redisconn import broker_settings, redbeat_settings
from worker.settings import Settings, load_settings_or_exit


def create_app(settings: Settings, *, queues: tuple[str, ...] = (DELETE_QUEUE,)) -> Celery:
    """The app; ``queues`` are what a worker of this app consumes unless ``-Q`` says otherwise.

    ``celery -A worker worker`` consumes deletion jobs only; ``celery -A scheduler worker`` adds
    the control queue (message triggers, the nightly purge, the reconciler).
    """
    broker = broker_settings(settings)  # a plain URL, or kombu's Sentinel transport (worker.redisconn)
    app = CleanupApp(settings, "sfs_cleanup", broker=broker.pop("broker_url"), set_as_current=False)
    transport_options = broker.pop("transport_options")
    app.conf.update(broker)  # broker_user / broker_password through Sentinel: never in the URL
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=settings.job_time_limit_s - 20,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.restore_interval_s,
            "unacked_restore_throttle": 1,
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "health_check_interval": 25,
        }
        | transport_options,
        worker_soft_shutdown_timeout=30.0,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        task_default_queue=CONTROL_QUEUE,
        task_queues=[Queue(name) for name in queues],
        task_create_missing_queues=True,
        task_routes={PURGE_BATCH: {"queue": DELETE_QUEUE}},
        timezone=settings.schedule_timezone,
        enable_utc=True,
        # RedBeat: the schedule and its lock live in Redis, so two beat processes can run for
        # high availability; only the lock holder sends. Failover takes redbeat_lock_timeout.
        beat_scheduler="redbeat.RedBeatScheduler",
        # The password goes in the options, not the URL: `celery inspect conf` (Flower's worker page)
        # masks keys named like a password, not a URL under an unusual key. The options are
        # explicit, so RedBeat does not fall back to the broker's transport options (deprecated).
        **redbeat_settings(settings, {"socket_connect_timeout": 5, "socket_timeout": 30, "health_check_interval": 25}),
        redbeat_key_prefix=f"{settings.key_prefix}:beat:",
        redbeat_lock_timeout=settings.beat_lock_timeout_s,
        beat_max_loop_interval=settings.beat_max_loop_interval_s,
    )
    app.conf.beat_schedule = {}  # the scheduler adds its own (scheduler.schedule)
    app.conf.result_expires = None  # no result backend: beat adds no daily celery.backend_cleanup job
    from worker.flower import configure_flower

    configure_flower(settings)  # `celery -A worker flower`: basic auth from SFS_CLEANUP_FLOWER_BASIC_AUTH
    from worker import tasks

    tasks.register(app)
    return app


@functools.cache
def default_app() -> Celery:
    """The app for ``celery -A worker``: settings from the environment, or a clear exit."""
    return create_app(load_settings_or_exit())
