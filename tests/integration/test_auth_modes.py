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


def test_iam_tokens_that_live_seconds_are_renewed_mid_run_by_a_few_logins(make_cluster: Any) -> None:
    ttl = 3.0
    workers = 2
    cluster, fake = make_cluster(
        lambda fake: iam_auth(fake, USER, PASSWORD, DOMAIN),
        fake_config(shares=4, tasks_per_share=200, token_ttl_s=ttl, latency_ms=20),
        SFS_CLEANUP_RATE_LIMIT="40",  # ~600 deletes at 40/s: a run of about 15 s, five token lifetimes
        SFS_CLEANUP_RATE_BURST="5",
        SFS_CLEANUP_BATCH_CONCURRENCY="8",
    )
    for n in range(workers):
        cluster.start_worker(f"w{n}")

    started = time.monotonic()
    code, report = cluster.purge_json("--wait")
    elapsed = time.monotonic() - started

    stats = fake.stats()
    lifetimes = elapsed / ttl
    # A token is renewed when a third of its life is left (SFS_CLEANUP_IAM_TOKEN_RENEW_BEFORE_S
    # is an hour, far above ttl / 3), so one login per two thirds of a lifetime is the steady state.
    renewal_period = ttl - ttl / 3
    expected_logins = math.ceil(elapsed / renewal_period)
    print(
        f"IAM ttl {ttl:g} s: run of {elapsed:.1f} s = {lifetimes:.1f} token lifetimes; "
        f"tokens_issued {stats['tokens_issued']} (steady state ~{expected_logins}), iam_requests "
        f"{stats['iam_requests']}, 401s {stats['auth_failures']}, deletes {stats['deletes_accepted']}"
    )
    assert report["status"] == "finished", report
    assert code == 0, report
    assert_adds_up(report)
    assert report["outcomes"]["failed"] == 0
    assert report["outcomes"]["deleted"] == stats["deletes_accepted"] == report["selected"] > 500
    assert lifetimes >= 3, "the run must span several token lifetimes to prove anything"
    # Renewals, shared by every process: neither a login per task nor one per process per renewal.
    assert stats["tokens_issued"] >= math.floor(lifetimes)
    assert stats["tokens_issued"] <= expected_logins + workers + 1  # + 1: the CLI's login for the listing
    assert stats["iam_requests"] == stats["tokens_issued"]
    # Proactive renewal: a token expiring in flight is rare, and every such 401 was absorbed.
    assert stats["auth_failures"] <= stats["tokens_issued"] * 8 * workers


@pytest.mark.parametrize("how", ["revoked-0307", "forgotten-0301"])
def test_tokens_invalidated_mid_run_are_replaced_by_one_login(make_cluster: Any, how: str) -> None:
    workers = 2
    cluster, fake = make_cluster(
        lambda fake: iam_auth(fake, USER, PASSWORD, DOMAIN),
        fake_config(shares=4, tasks_per_share=100, latency_ms=10),
        SFS_CLEANUP_RATE_LIMIT="60",
        SFS_CLEANUP_BATCH_CONCURRENCY="8",
    )
    for n in range(workers):
        cluster.start_worker(f"w{n}")
    invalidated: dict[str, Any] = {}

    def invalidate() -> None:
        if poll(lambda: fake.stats()["deletes_accepted"] >= 60, timeout=120):
            before = fake.stats()
            invalidated["count"] = fake.revoke_tokens() if how.startswith("revoked") else forget_tokens(fake)
            invalidated["deletes"] = before["deletes_accepted"]
            invalidated["tokens"] = before["tokens_issued"]

    thread = threading.Thread(target=invalidate, daemon=True)
    thread.start()
    code, report = cluster.purge_json("--wait")
    thread.join(10)

    stats = fake.stats()
    print(
        f"{how}: invalidated {invalidated} mid-run; after: tokens_issued {stats['tokens_issued']}, "
        f"401s {stats['auth_failures']}, deletes {stats['deletes_accepted']}/{report['selected']}"
    )
    assert invalidated.get("count") == 1, invalidated  # one token was in use, by every process
    assert invalidated["deletes"] < report["selected"] - 100, "invalidated well before the end"
    assert report["status"] == "finished", report
    assert code == 0, report
    assert_adds_up(report)
    assert report["outcomes"]["failed"] == 0
    assert report["outcomes"]["deleted"] == stats["deletes_accepted"] == report["selected"]
    assert stats["auth_failures"] >= 1  # the invalidation was really noticed ...
    assert stats["auth_failures"] <= 8 * workers  # ... at most once per request in flight
    assert stats["tokens_issued"] == invalidated["tokens"] + 1  # ... and one re-login, fleet-wide
