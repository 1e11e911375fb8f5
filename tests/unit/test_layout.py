"""The key layout's version: written once by a fleet's first process, refused when it differs."""

from __future__ import annotations

import pytest
import redis

from worker.errors import EXIT_USAGE
from worker.ledger.keys import Keys
from worker.ledger.layout import LAYOUT_VERSION, LayoutMismatchError, check_layout


def test_the_first_process_writes_the_layout_and_the_next_ones_accept_it(redis_client: redis.Redis) -> None:
    keys = Keys("layout-a")
    assert check_layout(redis_client, keys) == LAYOUT_VERSION
    assert int(redis_client.get(keys.layout) or 0) == LAYOUT_VERSION
    assert check_layout(redis_client, keys) == LAYOUT_VERSION


def test_a_process_of_another_layout_refuses_to_start_and_says_what_to_do(redis_client: redis.Redis) -> None:
    keys = Keys("layout-b")
    redis_client.set(keys.layout, LAYOUT_VERSION - 1)
    with pytest.raises(LayoutMismatchError) as refused:
        check_layout(redis_client, keys)
    assert refused.value.exit_code == EXIT_USAGE
    assert f"layout {LAYOUT_VERSION - 1}" in str(refused.value) and "Upgrading" in str(refused.value)
    assert int(redis_client.get(keys.layout) or 0) == LAYOUT_VERSION - 1, "an old layout is never overwritten"


def test_each_prefix_has_its_own_layout(redis_client: redis.Redis) -> None:
    redis_client.set(Keys("layout-old").layout, 1)
    assert check_layout(redis_client, Keys("layout-new")) == LAYOUT_VERSION
