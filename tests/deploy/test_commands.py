"""Every command that the image, Compose and Kubernetes run exists, with the options given; shell
wrappers hand over to the real program with ``exec``; ``celery -A worker`` loads the project's app."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
import warnings
from dataclasses import dataclass
from typing import Any

import pytest

from tests.deploy.files import (
    APP_MISSING,
    ROOT,
    app_services,
    dockerfile_cmd,
    dockerfile_healthcheck,
    is_our_image,
    pod_specs,
    project_app_conf,
)


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]
    main: bool  # the container's main process (not a probe)


def shell_execs(script: str) -> list[list[str]]:
    """The commands that a `sh -c` script hands its process to with `exec`."""
    segments = re.split(r";|&&|\|\||\n", script)
    return [shlex.split(segment.strip())[1:] for segment in segments if segment.strip().startswith("exec ")]


def _collect_commands() -> list[Command]:
    found = [
        Command("Dockerfile CMD", tuple(dockerfile_cmd()), main=True),
        Command("Dockerfile HEALTHCHECK", tuple(dockerfile_healthcheck()), main=False),
    ]
    for name, svc in app_services().items():
        if "command" in svc:
            found.append(Command(f"compose {name} command", tuple(svc["command"]), main=True))
        test = svc.get("healthcheck", {}).get("test")
        if test:
            argv = ("sh", "-c", test[1]) if test[0] == "CMD-SHELL" else tuple(test[1:])
            found.append(Command(f"compose {name} healthcheck", argv, main=False))
    for kind, name, pod in pod_specs():
        for container in pod["containers"]:
            if not is_our_image(container["image"]):
                continue
            argv = (*container.get("command", []), *container.get("args", []))
            if argv:
                found.append(Command(f"{kind}/{name} {container['name']}", argv, main=True))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in container.get(probe, {}):
                    found.append(
                        Command(f"{kind}/{name} {probe}", tuple(container[probe]["exec"]["command"]), main=False)
                    )
    return found


COMMANDS = _collect_commands()


def expand(command: Command) -> list[list[str]]:
    argv = list(command.argv)
    if argv[:2] == ["sh", "-c"]:
        script = argv[2].replace("$$", "$") if command.where.startswith("compose") else argv[2]
        return shell_execs(script)
    return [argv]


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if c.main and c.argv[:2] == ("sh", "-c")], ids=lambda c: c.where
)
def test_shell_wrappers_exec_the_real_program(command: Command) -> None:
    # With `exec`, celery replaces the shell and receives SIGTERM itself (PID 1 in the container).
    script = command.argv[2]
    last = [segment for segment in re.split(r";|\n", script) if segment.strip()][-1]
    assert last.strip().startswith("exec "), f"{command.where}: end the script with exec"


def parse_celery(argv: list[str]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Parse a celery command line exactly as the celery CLI would, without running it.

    The options' callbacks read defaults from an app, so a bare stand-in app is given; the real
    app's loading is checked by test_celery_loads_the_project_app.
    """
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as cli

    ctx = cli.make_context("celery", list(argv))
    ctx.obj = CLIContext(app=Celery("stand-in", set_as_current=False), no_color=True, workdir=None, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2 renames protected_args
        rest = [*ctx.protected_args, *ctx.args]
    name, sub, sub_args = cli.resolve_command(ctx, rest)
    assert name is not None and sub is not None
    sub_ctx = sub.make_context(name, sub_args, parent=ctx)
    return ctx.params, name, sub_ctx.params


def check_flower_options(tornado_argv: tuple[str, ...]) -> None:
    import flower.options  # noqa: F401  (defines Flower's options on tornado's global parser)
    from tornado.options import Error, options

    try:
        options.parse_command_line(["flower", *tornado_argv], final=False)
    except Error as exc:
        pytest.fail(f"flower option: {exc}")


def check_celery(argv: list[str]) -> None:
    from celery.worker.control import Panel

    top, name, params = parse_celery(argv)
    # -A worker: deletion workers and Flower; -A scheduler: the control worker (triggers, nightly,
    # reconciler) and beat, whose schedule is the scheduler's (the worker's app has none).
    assert top["app"] in ("worker", "scheduler"), "the Celery app is -A worker or -A scheduler"
    assert name in ("worker", "beat", "flower", "inspect"), name
    if name == "beat":
        assert top["app"] == "scheduler", "beat runs -A scheduler: the worker's app has no schedule"
    if name == "inspect":
        meta = Panel.meta.get(params["command"])
        assert meta is not None and meta.type == "inspect", f"no inspect command {params['command']!r}"
    if name == "flower":
        check_flower_options(params["tornado_argv"])
    if name == "beat" and params["scheduler"]:
        module, _, attribute = params["scheduler"].rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), params["scheduler"]


def check_sfs_cleanup(argv: list[str]) -> None:
    """The sfs-cleanup subcommand exists and takes these options.

    `--help` is appended: the command line is parsed in full (an unknown option fails), then help
    is printed instead of running the command.
    """
    from typer.testing import CliRunner

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sfs-cleanup"] == "scheduler.cli:main"
    assert importlib.util.find_spec("scheduler.cli") is not None, "the CLI package is missing"
    cli = importlib.import_module("scheduler.cli")
    assert callable(cli.main)
    result = CliRunner().invoke(cli.app, [*argv, "--help"], prog_name="sfs-cleanup")
    assert result.exit_code == 0, f"sfs-cleanup {' '.join(argv)}:\n{result.output}"
    assert "Usage: sfs-cleanup " + argv[0] in result.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_command_exists(command: Command) -> None:
    expanded = expand(command)
    assert expanded, f"{command.where}: nothing to run"
    for argv in expanded:
        program = argv[0]
        if program == "celery":
            check_celery(argv[1:])
        elif program == "sfs-cleanup":
            check_sfs_cleanup(argv[1:])
        elif program == "python":
            assert argv[1] == "-c"
            compile(argv[2], command.where, "exec")
        else:
            pytest.fail(f"{command.where}: {program} is not in the image's virtualenv")


def test_celery_loads_the_project_app() -> None:
    conf = project_app_conf()
    if conf is None:
        pytest.skip(APP_MISSING)
    # The deploy files pass --scheduler explicitly; the app should agree.
    assert conf["beat_scheduler"] == "redbeat.RedBeatScheduler"
