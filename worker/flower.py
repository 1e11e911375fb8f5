"""Flower for this app: ``celery -A worker flower`` takes its basic auth from the settings.

Flower (2.2) never reads the Celery app's configuration. Its options live in tornado's global
``options`` object and are filled, in this order, by ``FLOWER_*`` environment variables, a
``flowerconfig.py`` in the working directory, and the command line (``flower/command.py``:
``apply_env_options`` then ``apply_options``). ``celery -A worker`` builds our app in Celery's
group callback, which runs *before* the ``flower`` subcommand reads those sources. So, when the
subcommand about to run is ``flower``, :func:`configure_flower` (called by ``create_app``) sets
``basic_auth`` from ``SFS_CLEANUP_FLOWER_BASIC_AUTH`` as the starting value:

* ``--basic-auth``, ``FLOWER_BASIC_AUTH`` or a ``flowerconfig.py`` still override it;
* the secret is not copied into another environment variable (as exporting ``FLOWER_BASIC_AUTH``
  would do), and no other command (worker, beat, the CLI) imports Flower or sees the option;
* the format is Flower's own: ``user:password``, comma-separated for several users.

Flower's ``/healthcheck`` and ``/metrics`` are outside its authentication by design; keep them on
a private network. Its API answers 401 to requests without the credentials.
"""

from __future__ import annotations

import sys
from typing import Any

from worker.basicauth import parse_basic_auth
from worker.settings import Settings

ENV_NAME = "SFS_CLEANUP_FLOWER_BASIC_AUTH"


def running_flower() -> bool:
    """True inside ``celery ... flower`` (while Celery's CLI loads the app for that subcommand)."""
    try:
        import click
    except ImportError:  # pragma: no cover - Celery depends on click
        return False
    ctx: Any = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.invoked_subcommand == "flower" or ctx.info_name == "flower":
            return True
        ctx = ctx.parent
    return False


def configure_flower(settings: Settings) -> bool:
    """Give Flower its basic auth from the settings when the ``flower`` subcommand is starting.

    Returns True when the option was set. Exits with one ``error:`` line (code 2) if the value
    is malformed, so Flower never starts with an auth setting it would silently not enforce.
    """
    if not running_flower():
        return False
    from flower.options import options

    if settings.flower_basic_auth is None:
        if not options.basic_auth and not options.auth:
            print(
                f"warning: {ENV_NAME} is not set: Flower's pages are open and its API answers 401 to everyone",
                file=sys.stderr,
            )
        return False
    try:
        credentials = parse_basic_auth(settings.flower_basic_auth.get_secret_value())
    except ValueError as exc:
        print(f"error: {ENV_NAME}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not options.basic_auth:
        options.basic_auth = credentials
    return True
