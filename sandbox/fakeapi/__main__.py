"""``python -m sandbox.fakeapi``: the same command as ``sfs-cleanup fake-api``."""

from __future__ import annotations

import typer

from sandbox.fakeapi.cli import fake_api


def main() -> None:
    typer.run(fake_api)


if __name__ == "__main__":
    main()
