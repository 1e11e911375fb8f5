"""One error tree for the whole product, as httpx documents its own.

Every error a user can act on derives from :class:`CleanupError`; its subclass says what kind of
problem it is, and the kind decides the CLI's exit code and the shape of its message (one line
per problem, no stack trace). Anything else is an internal error: a bug, reported with its trace.

::

    CleanupError
    ├── UsageError             bad usage or input: exit 2
    │   ├── ProblemsError      several problems, one line each
    │   │   ├── SettingsError  SFS_CLEANUP_* settings       (worker.settings)
    │   │   ├── PolicyError    a policy file or flag        (scheduler.policy)
    │   │   └── PlanRefusedError  a stored plan not to send (scheduler.cli.common)
    │   ├── InputError         a manifest, an ID, a message (scheduler.inventory, worker.ids)
    │   ├── AuthError          credentials that cannot work (worker.api.auth)
    │   └── BundleRefusedError no evidence bundle made      (scheduler.evidence.bundle)
    ├── UnavailableError       something the run needs refused or unreachable: exit 6
    │   ├── ApiError           the SFS Turbo API            (worker.api.client)
    │   ├── AuthUnavailableError  IAM not answering         (worker.api.auth, also an AuthError)
    │   ├── InfrastructureError   Redis or the broker
    │   └── ArchiveTargetError    the archive's directory or bucket (scheduler.archive.target)
    └── BundleProblemError     an evidence bundle tampered with or inconsistent: exit 8
                                                            (scheduler.evidence.verify)

The run's own outcomes have their codes in :mod:`scheduler.report` (0 finished clean, 3 finished
with failed tasks, 4 aborted or cancelled, 5 not over yet, 7 held for approval); 70 is any other
exception (``scheduler.cli.main``).
"""

from __future__ import annotations

from typing import ClassVar

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 6
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h)


class CleanupError(Exception):
    """Base of every error a user can act on; ``lines`` are what the CLI prints."""

    exit_code: ClassVar[int] = EXIT_INTERNAL

    @property
    def lines(self) -> list[str]:
        return [str(self)]


class UsageError(CleanupError):
    """Bad usage or input: nothing was sent for it."""

    exit_code = EXIT_USAGE


class ProblemsError(UsageError):
    """Several problems of one kind found at once, one line each (every one is reported, not only
    the first, so a user fixes them in one go); ``title`` heads the message."""

    title: ClassVar[str] = "invalid input"

    def __init__(self, lines: list[str]) -> None:
        self._lines = list(lines)
        super().__init__(f"{self.title}:\n  " + "\n  ".join(self._lines))

    @property
    def lines(self) -> list[str]:
        return self._lines


class InputError(UsageError):
    """Refused input: a manifest, an ID, a trigger message."""


class UnavailableError(CleanupError):
    """Something the command needs refused it or could not be reached."""

    exit_code = EXIT_UNAVAILABLE


class InfrastructureError(UnavailableError):
    """Redis or the broker cannot be reached."""
