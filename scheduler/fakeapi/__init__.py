"""A fake of the SFS Turbo HPC-cache task API and IAM token login, for tests, benchmarks and demos.

Never imported by production code. It listens on loopback addresses only.
"""

from __future__ import annotations

from scheduler.fakeapi.config import ConfigError, FakeConfig
from scheduler.fakeapi.process import FakeApiProcess
from scheduler.fakeapi.seed import Inventory, dump, eligible, generate, load
from scheduler.fakeapi.server import FakeApi, build_inventory, serve
from scheduler.fakeapi.tasks import Task

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
