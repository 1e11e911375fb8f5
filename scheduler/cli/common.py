"""What every ``sfs-cleanup`` command shares: its context, its error lines, and its output streams."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from scheduler.context import Context
from scheduler.planner import PlanResult
from scheduler.report import EXIT_OK, exit_code, render_report
from worker.errors import CleanupError, InfrastructureError, ProblemsError, UsageError
from worker.settings import Settings, load_settings

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
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            problem = actionable(exc)
            if problem is None:
                raise
        print_errors(problem.lines)
        raise typer.Exit(problem.exit_code)

    return wrapper  # type: ignore[return-value]


def actionable(exc: BaseException) -> CleanupError | None:
    """``exc`` as an error the user can act on (Redis unreachable is one), or None for a bug."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return InfrastructureError(
            f"Redis is unreachable ({exc}); check SFS_CLEANUP_REDIS_URL and that Redis is running"
        )
    return exc if isinstance(exc, CleanupError) else None


def print_errors(lines: list[str]) -> None:
    for line in lines:
        err.print(f"error: {line}", markup=False, highlight=False)


def confirm(yes: bool, count: int, what: str) -> bool | None:
    """The user's consent to delete ``count`` tasks: ``--yes``, or the number typed back on a
    terminal (as aws-nuke has the account typed back: a reflex "y" is not consent).

    True: consented. False: refused at the terminal. None: no terminal to ask and no ``--yes``.
    """
    if yes:
        return True
    if not sys.stdin.isatty():
        return None
    answer = str(typer.prompt(f"{what} deletes {count} task(s) for real. Type {count} to go on", default="", err=True))
    return answer.strip().replace(",", "") == str(count)


def send_when_consented(ctx: Context, plan: PlanResult, yes: bool, what: str) -> None:
    """Release a plan held for consent once the user agrees; otherwise it stays held, unsent,
    and the error says how to send it later (exit 2)."""
    from scheduler.runs import release

    answer = confirm(yes, plan.planned, what)
    if answer is not True:
        first = "add --yes to confirm" if answer is None else "not confirmed"
        raise UserError(
            f"{first}: nothing was sent; the plan is stored as run {plan.run_id} (held): "
            f"send exactly it with `sfs-cleanup runs apply {plan.run_id}`, or cancel it with `sfs-cleanup runs cancel`"
        )
    if problems := release(ctx, plan.run_id, by=operator(), how="consent"):
        raise PlanRefusedError(problems)


class PlanRefusedError(ProblemsError):
    """A stored plan that must not be sent as it is (stale, or made under other settings)."""

    title = "plan refused"


def operator() -> str:
    """Who consented, for the record (the OS user; no secret)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def context() -> Context:
    settings = load_settings()
    setup_cli_logging(settings)
    return Context(settings)


def setup_cli_logging(settings: Settings) -> None:
    """The CLI logs to stderr, in console form whatever ``SFS_CLEANUP_LOG_FORMAT`` says: a person
    reads them beside a table, and stdout stays for reports and ``--json`` alone (JSON log lines
    there, or in a terminal mixing both streams, would pass for output). Services keep the format."""
    from worker.logging import setup_process_logging

    setup_process_logging(settings, fmt="console")


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
