"""All configuration, read once from ``SFS_CLEANUP_*`` variables (and ``.env``), then passed down.

Nothing deeper in the code reads the environment. Problems are reported all at once, one line
each, with the variable's name: see :func:`load_settings` and :class:`SettingsError`. The model
is in :mod:`worker.settings.model` (the notification fields in :mod:`worker.settings.notify`),
the reading in :mod:`worker.settings.loading`.
"""

from worker.settings.base import ENV_PREFIX, CommaList, SettingsError
from worker.settings.loading import load_settings, load_settings_or_exit, setting_names
from worker.settings.model import Settings
from worker.settings.notify import NOTIFY_EVENT_KINDS

__all__ = [
    "ENV_PREFIX",
    "NOTIFY_EVENT_KINDS",
    "CommaList",
    "Settings",
    "SettingsError",
    "load_settings",
    "load_settings_or_exit",
    "setting_names",
]
