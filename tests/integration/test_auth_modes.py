"""The three ways to authenticate, end to end: the CLI, real Celery workers, a real Redis, and
the fake API (its gateway checks tokens and verifies AK/SK signatures with its own code; its
IAM issues short-lived tokens on demand).

1. ``purge --wait --json`` succeeds with a ready token, an IAM password login and AK/SK signing
   (with and without a security token); IAM tokens that live seconds are renewed mid-run by a
   handful of logins, and tokens revoked mid-run are replaced by one re-login.
2. Credentials that cannot work (a wrong IAM password, an unknown AK, a wrong SK, a client
   clock 20 minutes off) end the run as ``aborted`` (exit code 4) with one reason line that
   names what to fix, after a handful of requests: no retry storm, no login storm.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.fakeapi.config import FakeConfig
from scheduler.fakeapi.server import FakeApi
from tests.support.secrets import (
    AuthCluster,
    aksk_auth,
    eligible_tasks,
    forget_tokens,
    iam_auth,
    poll,
    token_auth,
    write_manifest,
)

pytestmark = pytest.mark.integration

USER, PASSWORD, DOMAIN = "purge-robot", "Iam-Pass+word/42=", "acme-account"
AK, SK = "AKMODESTEST0000000001", "SkModes+Secret/Key=0000000000000000000001"
TEMP_AK, TEMP_SK, SECURITY_TOKEN = "AKTEMPORARY000000001", "TempSk+Secret/Key=01", "gQ5jbi1ub3J0aC00+securitytoken="
TOKEN = "MIIstatic-token-for-the-modes-test"  # noqa: S105 - a fake's token


def fake_config(**overrides: Any) -> FakeConfig:
    base: dict[str, Any] = {
        "shares": 2,
        "tasks_per_share": 150,
        "seed": 23,
        "deleting_seconds": 0.0,
        "tokens": [TOKEN],
        "iam_users": [{"name": USER, "password": PASSWORD, "domain": DOMAIN}],
        "aksk": {AK: SK, TEMP_AK: TEMP_SK},
        "security_tokens": {TEMP_AK: SECURITY_TOKEN},
        "fault_seed": 3,
    }
    base.update(overrides)
    return FakeConfig(**base)


@pytest.fixture
def make_cluster(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[AuthCluster, FakeApi]] = []

    def make(auth: Any, config: FakeConfig, **settings: str) -> tuple[AuthCluster, FakeApi]:
        fake = FakeApi(config).start()
        cluster = AuthCluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings=settings)
        cluster.auth = auth(fake) if callable(auth) else auth
        started.append((cluster, fake))
        return cluster, fake

    yield make
    for cluster, fake in started:
        cluster.stop()
        fake.stop()


def assert_adds_up(report: dict[str, Any]) -> None:
    assert sum(report["outcomes"].values()) == report["selected"], report
    assert report["pending"] == 0, report


MODES = {
    "token": lambda fake: token_auth(TOKEN),
    "iam": lambda fake: iam_auth(fake, USER, PASSWORD, DOMAIN),
    "aksk": lambda fake: aksk_auth(AK, SK),
    "aksk-temporary": lambda fake: aksk_auth(TEMP_AK, TEMP_SK, SECURITY_TOKEN),
}


# --- 1. Every mode purges -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_purge_succeeds_in_each_auth_mode(make_cluster: Any, mode: str) -> None:
    cluster, fake = make_cluster(MODES[mode], fake_config(latency_ms=2))
    expected = len(eligible_tasks(fake))
    cluster.start_worker("w1", concurrency=2)

    code, report = cluster.purge_json("--wait")  # the live listing authenticates too

    stats = fake.stats()
    print(f"{mode}: selected {report['selected']}, stats {_auth_figures(stats)}")
    assert report["status"] == "finished", report
    assert code == 0, report
    assert_adds_up(report)
    assert report["selected"] == expected > 100
    assert report["outcomes"]["deleted"] == stats["deletes_accepted"] == expected
    assert report["outcomes"]["failed"] == 0
    assert stats["auth_failures"] == 0
    if mode == "iam":
        # The CLI logged in for the listing; the worker processes took its token from Redis.
        assert stats["tokens_issued"] == 1, stats
    else:
        assert stats["iam_requests"] == 0


def _auth_figures(stats: dict[str, Any]) -> dict[str, Any]:
    keys = ("requests_total", "deletes_accepted", "auth_failures", "iam_requests", "tokens_issued", "answered_429")
    return {k: stats[k] for k in keys}
