"""Which DELETE gets which injected fault, decided once per request in a fixed order.

Order: a dropped connection (before the delete takes effect, unless ``drop_after_effect``),
then a permanent refusal of the task, then its first-K failures, then the random 500s (or, with
``error_per_attempt``, the 500s chosen per task and attempt number), then the random busy answers.
"""

from __future__ import annotations

import hashlib
import random
from enum import Enum

from sandbox.fakeapi.config import FakeConfig


class Fault(Enum):
    DROP = "drop"  # close the connection now, the delete never happens
    DROP_AFTER = "drop_after_effect"  # do the delete, then close without answering
    FAIL_FIRST = "fail_first"  # 500 SFS.TURBO.0005: one of the task's first K attempts
    ERROR = "error_ratio"  # 500 SFS.TURBO.0005 at random
    BUSY = "busy_ratio"  # 400 SFS.TURBO.0011 at random
    PERMANENT = "permanent_error_ratio"  # 400 SFS.TURBO.0001 for the chosen tasks, every time


def chosen_by_ratio(task_id: str, ratio: float) -> bool:
    """A stable pick: the same task is chosen in every run and process (unlike ``hash()``)."""
    if ratio <= 0:
        return False
    digest = hashlib.sha256(task_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < ratio


def attempt_fails(seed: int | None, task_id: str, attempt: int, ratio: float) -> bool:
    """``error_per_attempt``: whether the task's DELETE number ``attempt`` (from 1) answers 500."""
    return chosen_by_ratio(f"attempt:{seed or 0}:{attempt}:{task_id}", ratio)


class FaultDice:
    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.attempts: dict[tuple[str, str], int] = {}  # DELETEs seen per task, for fail_first
        self.error_attempts: dict[tuple[str, str], int] = {}  # DELETEs per task, for error_per_attempt

    def reseed(self, seed: int | None) -> None:
        self.rng = random.Random(seed)

    def latency_s(self, config: FakeConfig) -> float:
        extra = self.rng.uniform(0, config.latency_jitter_ms) if config.latency_jitter_ms > 0 else 0.0
        return (config.latency_ms + extra) / 1000.0

    def for_delete(self, config: FakeConfig, share_id: str, task_id: str) -> Fault | None:
        rng = self.rng
        if config.drop_ratio > 0 and rng.random() < config.drop_ratio:
            return Fault.DROP_AFTER if config.drop_after_effect else Fault.DROP
        # Stable per task (no dice): a permanent refusal is the same on every try and replay.
        # Salted, so the chosen tasks are not the same ones as fail_first_ratio's.
        if chosen_by_ratio(f"permanent:{task_id}", config.permanent_error_ratio):
            return Fault.PERMANENT
        if config.fail_first_k > 0 and (
            task_id in config.fail_first_task_ids or chosen_by_ratio(task_id, config.fail_first_ratio)
        ):
            key = (share_id, task_id)
            seen = self.attempts.get(key, 0) + 1
            self.attempts[key] = seen
            if seen <= config.fail_first_k:
                return Fault.FAIL_FIRST
        if config.error_ratio > 0 and config.error_per_attempt:
            key = (share_id, task_id)
            seen = self.error_attempts[key] = self.error_attempts.get(key, 0) + 1
            if attempt_fails(config.fault_seed, task_id, seen, config.error_ratio):
                return Fault.ERROR
        elif config.error_ratio > 0 and rng.random() < config.error_ratio:
            return Fault.ERROR
        if config.busy_ratio > 0 and rng.random() < config.busy_ratio:
            return Fault.BUSY
        return None
