"""The documentation stays true: every setting is in its table, every CLI command in its reference,
and the README stays short enough for a newcomer (the reference lives in docs/)."""

from __future__ import annotations

import re
from pathlib import Path

from scheduler.cli import app
from worker.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SETTINGS = (ROOT / "docs" / "settings.md").read_text()
CLI = (ROOT / "docs" / "cli.md").read_text()


def test_every_setting_is_in_the_settings_table() -> None:
    rows = set(re.findall(r"^\| `(SFS_CLEANUP_[A-Z0-9_]+)` \|", SETTINGS, flags=re.M))
    expected = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert rows == expected


def test_every_command_is_in_the_cli_reference() -> None:
    import typer.main

    group = typer.main.get_command(app)
    names: list[str] = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        names += [f"{name} {s}" for s in sub] if sub else [name]
    missing = [n for n in names if f"sfs-cleanup {n.split()[0]}" not in CLI]
    assert not missing
    for n in names:
        if " " in n:
            group_name, sub = n.split()
            assert re.search(rf"sfs-cleanup {group_name} [^\n]*\b{sub}\b", CLI), n


def test_the_readme_is_short_and_points_to_every_page_of_the_docs() -> None:
    assert len(README.splitlines()) < 250
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages and all(f"docs/{page}" in README for page in pages), pages
