"""``sfs-cleanup targets``: check a targets file, list its targets, print its JSON Schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from scheduler.cli.common import UserError, friendly, out, print_json

targets_app = typer.Typer(
    help="Validate a targets file (many projects, regions, accounts), list it, print its JSON Schema.",
    no_args_is_help=True,
)


def _table(title: str, targets: dict[str, dict[str, Any]], *, resolve: bool) -> Table:
    columns = ["target", "region", "endpoint", "project", "credentials", "shares", "rate"]
    table = Table(*columns, *(["resolves here"] if resolve else []), title=title)
    for name, t in targets.items():
        shares = ",".join(t["shares"] or ()) or f"found: {t.get('name_pattern') or 'settings pattern'}"
        rate = f"{t['rate']:g}" if t.get("rate") is not None else "settings"
        row = [name, t["region"], t["endpoint"], t["project_id"], t["credentials"], shares, rate]
        if resolve:
            row.append("yes" if t["credentials_resolve"] else f"no: {t.get('problem', '')}")
        table.add_row(*row)
    return table


@targets_app.command("validate")
@friendly
def targets_validate(
    file: Annotated[Path, typer.Argument(help="A targets file (YAML).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a targets file without touching Redis or the API or reading any credential: every
    problem on its own line (file, target, field; exit 2), or its targets."""
    from worker.targets import load_targets

    found = load_targets(file)
    shown = {t.name: t.describe() for t in found.targets}
    if as_json:
        print_json({"file": str(file), "targets": shown})
        return
    out.print(_table(str(file), shown, resolve=False))


@targets_app.command("check")
@friendly
def targets_check(
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the targets of SFS_CLEANUP_TARGETS_FILE and whether each one's credentials resolve in
    this process (the variables are set, the secret file is readable); exit 2 if one does not.
    No value is shown, and neither Redis nor the API is asked."""
    from scheduler.targets import describe_targets, targets_of
    from worker.settings import load_settings

    settings = load_settings()
    found = targets_of(settings)
    if found is None:
        raise UserError("SFS_CLEANUP_TARGETS_FILE is not set: the settings' one project is the only target")
    shown = describe_targets(found, settings)
    if as_json:
        print_json({"file": settings.targets_file, "targets": shown})
    else:
        out.print(_table(str(settings.targets_file), shown, resolve=True))
    problems = [t["problem"] for t in shown.values() if not t["credentials_resolve"]]
    if problems:
        raise UserError("; ".join(problems))


@targets_app.command("schema")
def targets_schema() -> None:
    """The JSON Schema of targets files, from the model itself."""
    from worker.targets import schema

    print_json(schema())
