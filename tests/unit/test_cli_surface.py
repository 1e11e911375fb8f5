"""The shape of the ``sfs-cleanup`` command line: ``--json`` on every command that prints a result,
``--version`` at the top."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from scheduler.cli import DISTRIBUTION, app

#: Commands without --json, and why.
NO_JSON = {
    "metrics": "serves metrics over HTTP; prints one line saying where",
    "fake-api": "a test double's server",
    "audit export": "writes a report in the format --format names (jsonl or csv)",
    "trigger-schemas": "its output is always one JSON object",
    "policy schema": "its output is always one JSON object",
    "targets schema": "its output is always one JSON object",
}


def commands() -> dict[str, Any]:
    """Every command, groups' as "group sub" (Typer's own click: duck-typed, as test_readme does)."""
    found: dict[str, Any] = {}
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        found |= {f"{name} {s}": c for s, c in sub.items()} if sub else {name: command}
    return found


def test_every_command_that_prints_a_result_has_json() -> None:
    found = commands()
    missing = [
        name
        for name, command in found.items()
        if name not in NO_JSON and not any("--json" in param.opts for param in command.params)
    ]
    assert not missing, f"add --json (or a reason to NO_JSON): {missing}"
    assert set(NO_JSON) - {"fake-api"} <= set(found), "NO_JSON names a command that is gone"


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert (result.exit_code, result.output) == (0, f"sfs-cleanup {version(DISTRIBUTION)}\n")


def test_a_bug_exits_70_with_its_trace(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import scheduler.cli.runs
    from scheduler.cli import main

    def broken() -> None:
        raise RuntimeError("a bug, not a user's mistake")

    monkeypatch.setattr(scheduler.cli.runs, "context", broken)
    monkeypatch.setattr("sys.argv", ["sfs-cleanup", "runs", "list"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 70
    assert "RuntimeError: a bug, not a user's mistake" in capsys.readouterr().err
