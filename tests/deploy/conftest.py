"""Fixtures of the deployment-file tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.deploy.files import scratch_dir


@pytest.fixture(scope="module", autouse=True)
def _remove_scratch_dir() -> Iterator[None]:
    yield
    if scratch_dir.cache_info().currsize:
        shutil.rmtree(scratch_dir(), ignore_errors=True)
        scratch_dir.cache_clear()
