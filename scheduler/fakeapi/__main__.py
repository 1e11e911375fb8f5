"""``python -m scheduler.fakeapi``: the same command as ``sfs-cleanup fake-api``."""

from __future__ import annotations

import typer

from scheduler.fakeapi.cli import fake_api


def main() -> None:
    typer.run(fake_api)


if __name__ == "__main__":
    main()
