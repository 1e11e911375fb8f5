"""``sfs-cleanup policy``: check a policy file, and print the JSON Schema policy files follow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from scheduler.cli.common import friendly, out, print_json

policy_app = typer.Typer(help="Validate policy files and print their JSON Schema.", no_args_is_help=True)


@policy_app.command("validate")
@friendly
def policy_validate(
    file: Annotated[Path, typer.Argument(help="A policy file, or a file of named policies (YAML or TOML).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a policy file without touching Redis or the API: every problem on its own line
    (file, policy, field; exit 2), or what it selects and when."""
    from scheduler.policies import validate_file

    found = validate_file(file)
    if as_json:
        print_json(found)
        return
    policies = found.get("policies") or {"(the policy)": found["policy"]}
    table = Table("policy", "statuses", "types", "older than", "shares", "cap", "schedule", title=str(file))
    for name, p in policies.items():
        schedule = f"{p['schedule']} ({p.get('timezone', 'settings')})" if p.get("schedule") else ""
        table.add_row(
            name,
            ",".join(p.get("statuses", ())),
            ",".join(p.get("types", ())) or "all",
            p.get("older_than", ""),
            ",".join(p.get("shares", ())) or "settings",
            str(p.get("max_deletions", "none")),
            schedule,
        )
    out.print(table)


@policy_app.command("schema")
def policy_schema() -> None:
    """The JSON Schema of policy files (named policies, or one policy), from the model itself."""
    from scheduler.policies import schema

    print_json(schema())
