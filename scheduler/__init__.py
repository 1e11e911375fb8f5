"""The scheduler: inventory, policy, planning and dispatch of purge runs, and the CLI.

``celery -A scheduler worker`` starts a worker that also runs the control jobs (message
triggers, the nightly purge, the reconciler), and ``celery -A scheduler beat`` sends the
scheduled ones; the app is built on first access.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["app"]


@functools.cache
def _app() -> Any:
    from worker.celery_app import create_app
    from worker.jobnames import CONTROL_QUEUE, DELETE_QUEUE, settings_of
    from worker.settings import load_settings_or_exit

    app = create_app(load_settings_or_exit(), queues=(DELETE_QUEUE, CONTROL_QUEUE))
    from scheduler import schedule, service

    settings = settings_of(app)
    schedule.install(app, settings)
    service.register(app)
    return app


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return _app()
    raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
