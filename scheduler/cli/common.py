"""What every ``sfs-cleanup`` command shares: its context, its error lines, and its output streams."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from scheduler.context import Context
from scheduler.report import EXIT_OK, exit_code, render_report
from worker.errors import CleanupError, InfrastructureError, UsageError
from worker.settings import load_settings

out = Console()
err = Console(stderr=True, soft_wrap=True)  # one line per problem, for logs and grep
F = TypeVar("F", bound=Callable[..., Any])


class UserError(UsageError):
    """A problem the user can fix; printed as one line, no stack trace."""


def friendly(func: F) -> F:
    """Turn the errors a user can act on (:mod:`worker.errors`) into ``error: ...`` lines and the
    exit code of their kind: 2 bad usage or input, 6 something the command needs unavailable."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return func(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            problem: CleanupError = InfrastructureError(
                f"Redis is unreachable ({exc}); check SFS_CLEANUP_REDIS_URL and that Redis is running"
            )
        except CleanupError as exc:
            problem = exc
        for line in problem.lines:
            err.print(f"error: {line}", markup=False, highlight=False)
        raise typer.Exit(problem.exit_code)

    return wrapper  # type: ignore[return-value]


#: The word a person types to let a run delete tasks (without ``--yes``, on a terminal).
CONSENT_WORD = "delete"


def require_consent(yes: bool, what: str) -> None:
    """No deletion without the user's consent: ``--yes``, or the word typed back on a terminal.

    Asked before anything is planned: refused, nothing is written and nothing is sent. A script
    (no terminal on standard input) that did not say ``--yes`` is refused with one line.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError(
            f"{what} deletes tasks: add --yes to confirm (nothing was planned or sent; --dry-run shows what would go)"
        )
    answer = typer.prompt(f"{what} deletes tasks for real. Type {CONSENT_WORD!r} to go on", default="")
    if answer.strip() != CONSENT_WORD:
        raise UserError("not confirmed: nothing was planned or sent")


def context() -> Context:
    from worker.logging import setup_process_logging

    settings = load_settings()
    setup_process_logging(settings)  # logs to stderr: stdout stays for reports and --json
    return Context(settings)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=None, default=str) + "\n")


def finish(report: dict[str, Any], as_json: bool) -> None:
    """Print a finished run's report and exit with its code (0 only when nothing failed)."""
    if as_json:
        print_json(report)
    else:
        render_report(report, out)
    code = exit_code(report)
    if code != EXIT_OK:
        raise typer.Exit(code)
