"""``sfs-cleanup``: plan and start purges, follow runs, read the audit, run the fake API and the demo.

This module assembles the Typer app from one module per command group (``purge``, ``runs``,
``audit``, ``protect``, ``check``) and adds the commands other distributions install;
:mod:`scheduler.cli.common` holds what the commands share. ``scheduler.cli:main`` is the
``sfs-cleanup`` console script.
"""

from __future__ import annotations

from typing import Annotated

import typer

from scheduler.cli.audit import audit_app
from scheduler.cli.check import check, reconcile, trigger_schemas
from scheduler.cli.common import UserError, context, err, friendly, out, print_json
from scheduler.cli.policy import policy_app
from scheduler.cli.protect import protect_app
from scheduler.cli.purge import purge
from scheduler.cli.runs import runs_app
from scheduler.cli.targets import targets_app
from worker.errors import EXIT_INTERNAL, EXIT_USAGE

__all__ = [
    "COMMAND_PLUGINS",
    "DISTRIBUTION",
    "EXIT_USAGE",
    "UserError",
    "app",
    "audit_app",
    "context",
    "err",
    "friendly",
    "main",
    "out",
    "policy_app",
    "print_json",
    "protect_app",
    "runs_app",
    "targets_app",
]

app = typer.Typer(
    name="sfs-cleanup",
    help="Purge finished SFS Turbo HPC-cache tasks safely, with a fleet-wide rate limit and an audit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
#: The distribution whose version ``--version`` prints.
DISTRIBUTION = "sfs-turbo-cleanup"


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"sfs-cleanup {version(DISTRIBUTION)}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo(f"error: {DISTRIBUTION} is not installed, so it has no version", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Options of ``sfs-cleanup`` itself (Typer takes a group's options from its callback)."""


# Typer lists plain commands in the order they are added, then the groups.
app.command()(purge)
app.command()(check)
app.command()(reconcile)
app.command("trigger-schemas")(trigger_schemas)
app.add_typer(runs_app, name="runs")
app.add_typer(audit_app, name="audit")
app.add_typer(protect_app, name="protect")
app.add_typer(policy_app, name="policy")
app.add_typer(targets_app, name="targets")

#: Commands other distributions add (the sandbox's ``demo`` and ``fake-api``): the product names
#: none of them, so it installs and runs without them.
COMMAND_PLUGINS = "sfs_cleanup.commands"


def _register_optional() -> None:
    from importlib.metadata import entry_points

    from scheduler.metrics import metrics

    app.command("metrics", help="Serve Prometheus metrics read from Redis (fleet-wide figures).")(metrics)
    helps = {"fake-api": "Run the local fake SFS Turbo API (tests, demos)."}
    for plugin in entry_points(group=COMMAND_PLUGINS):
        app.command(plugin.name, help=helps.get(plugin.name))(plugin.load())


_register_optional()


def main() -> None:
    """The ``sfs-cleanup`` console script: errors a user can act on exit with their kind's code
    (``friendly``); anything else is a bug, printed with its trace, exit 70 (EX_SOFTWARE)."""
    import sys
    import traceback

    try:
        app()
    except Exception:
        traceback.print_exc()
        err.print("error: internal error (a bug): please report it with the trace above", markup=False)
        sys.exit(EXIT_INTERNAL)
