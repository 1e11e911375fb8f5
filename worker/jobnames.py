"""The queues and job names of the fleet, in one table, and the app type that carries the settings.

Job names are stable and explicit so that other systems can send them by name. The worker
runs one job; the control jobs (message triggers, the nightly purge, the reconciler) and the
beat schedule are the scheduler's own: see :mod:`scheduler.jobs`.
"""

from __future__ import annotations

from typing import Any, Final

from celery import Celery

from worker.settings import Settings

DELETE_QUEUE: Final = "sfs.delete"
CONTROL_QUEUE: Final = "sfs.control"

PURGE_BATCH: Final = "sfs.purge_batch"  # one plan batch, on DELETE_QUEUE


class CleanupApp(Celery):  # type: ignore[misc]  # Celery is untyped
    """The Celery app, built with the settings it runs under.

    The settings are the app's own attribute, not in ``app.conf``: workers show their conf to
    Flower, and the settings hold Redis URLs and secrets.
    """

    def __init__(self, settings: Settings, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings


def settings_of(app: Celery) -> Settings:
    """The settings an app was built with (every app of this project is a :class:`CleanupApp`)."""
    if not isinstance(app, CleanupApp):
        raise TypeError(f"{app!r} is not built by worker.celery_app.create_app")
    return app.settings
