"""A fake of the SFS Turbo HPC-cache task API and IAM token login, for tests, benchmarks and demos.

Never imported by production code. It listens on loopback addresses only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.fakeapi.config import ConfigError, FakeConfig
    from sandbox.fakeapi.process import FakeApiProcess
    from sandbox.fakeapi.seed import Inventory, dump, eligible, generate, load
    from sandbox.fakeapi.server import FakeApi, build_inventory, serve
    from sandbox.fakeapi.tasks import Task

# Names are loaded on first use (PEP 562): the server pulls in aiohttp, which every
# `sfs-cleanup` command would otherwise pay for at start-up because `demo` and `fake-api` are
# registered with the others.
_WHERE = {
    "ConfigError": "config",
    "FakeConfig": "config",
    "FakeApiProcess": "process",
    "Inventory": "seed",
    "dump": "seed",
    "eligible": "seed",
    "generate": "seed",
    "load": "seed",
    "FakeApi": "server",
    "build_inventory": "server",
    "serve": "server",
    "Task": "tasks",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "ConfigError",
    "FakeApi",
    "FakeApiProcess",
    "FakeConfig",
    "Inventory",
    "Task",
    "build_inventory",
    "dump",
    "eligible",
    "generate",
    "load",
    "serve",
]
