from __future__ import annotations

import random

from worker.retry import RetryPolicy


def test_backoff_doubles_is_capped_and_never_zero() -> None:
    policy = RetryPolicy(max_retries=8, base_s=1.0, cap_s=8.0)
    rng = random.Random(1)
    for retry, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (7, 8.0)]:
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert min(delays) >= step / 2
        assert max(delays) <= step
        assert max(delays) - min(delays) > step / 4  # jittered, so a fleet does not retry in step


def test_budget_covers_a_sixty_second_outage_with_the_defaults() -> None:
    # The default budget must outlast a one-minute outage, so such an outage fails no task.
    assert RetryPolicy().budget_s() > 60
