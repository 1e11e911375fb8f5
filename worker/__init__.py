"""The deletion workers. ``celery -A worker worker`` finds the Celery app as ``worker.app``.

The app is built on first access from the settings in the environment, so importing a module
of this package (the client, the signer, ...) never needs settings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.celery_app import default_app

        return default_app()
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
