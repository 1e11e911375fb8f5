"""The three ways to authenticate, end to end: the CLI, real Celery workers, a real Redis, and
the fake API (its gateway checks tokens and verifies AK/SK signatures with its own code; its
IAM issues short-lived tokens on demand).

1. ``purge --wait --json`` succeeds with a ready token, an IAM password login and AK/SK signing
   (with and without a security token); IAM tokens that live seconds are renewed mid-run by a
   handful of logins, and tokens revoked mid-run are replaced by one re-login.
2. Credentials that cannot work (a wrong IAM password, an unknown AK, a wrong SK, a client
   clock 20 minutes off, a token the gateway does not know) end the run as ``aborted`` (exit
   code 4) with one reason line that names what to fix, after a handful of requests: no retry
   storm, no login storm (a fleet starting together tries a refused password once). When the
   CLI's own listing meets them, it prints one ``error:`` line and exits 2.

The client clock is skewed with the fake's ``clock_offset_s`` (its gateway's clock is moved,
which is the same thing as seen from the signature check).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from tests.support.environment import aksk_auth, iam_auth, token_auth
from tests.support.secrets import (
    AuthCluster,
    eligible_tasks,
    forget_tokens,
    poll,
    write_manifest,
)

pytestmark = pytest.mark.integration

#: A console log line: ISO time, then the level in brackets.
_CONSOLE_LOG = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*Z \[\s*(debug|info|warning|error|critical)\s*\] ")

USER, PASSWORD, DOMAIN = "purge-robot", "Iam-Pass+word/42=", "acme-account"
AK, SK = "AKMODESTEST0000000001", "SkModes+Secret/Key=0000000000000000000001"
TEMP_AK, TEMP_SK, SECURITY_TOKEN = "AKTEMPORARY000000001", "TempSk+Secret/Key=01", "gQ5jbi1ub3J0aC00+securitytoken="
TOKEN = "MIIstatic-token-for-the-modes-test"


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

    result = cluster.cli("purge", "--wait", "--json")  # the live listing authenticates too

    code, stats, report = result.returncode, fake.stats(), report_of(result)
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
    # --json: standard output is the report, one JSON object, nothing else (logs belong on stderr).
    others = result.stdout.strip().splitlines()[:-1]
    assert not others, f"--json printed more than the report on stdout: {others}"


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def report_of(result: Any) -> dict[str, Any]:
    """The report: the last line of standard output (lenient, for diagnostics)."""
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


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
    cluster.start_worker("w1", concurrency=workers)  # two pool processes, each with its own token provider
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


# --- 2. Credentials that cannot work: one clear line, no storm ---------------------------------

BATCH_CONCURRENCY = 4
ERROR_WORKERS = 2  # worker processes (one Celery worker, two pool processes)
IN_FLIGHT_BOUND = 2 * BATCH_CONCURRENCY * ERROR_WORKERS  # deletes that may be in flight when the run stops

# case -> (credentials, fake overrides, what the reason must name)
BAD_CREDENTIALS: dict[str, tuple[Any, dict[str, Any], tuple[str, ...]]] = {
    "wrong-iam-password": (
        lambda fake: iam_auth(fake, USER, "Not-The-Password-1", DOMAIN),
        {},
        ("IAM refused the login", "SFS_CLEANUP_IAM_PASSWORD"),
    ),
    "unknown-ak": (
        lambda fake: aksk_auth("AKUNKNOWN00000000000", SK),
        {},
        ("APIGW.0301", "ACCESS_KEY"),
    ),
    "wrong-sk": (
        lambda fake: aksk_auth(AK, "Wrong+Secret/Key=000000000000000000000000"),
        {},
        ("APIGW.0301", "SECRET_KEY"),
    ),
    "clock-20-minutes-off": (
        lambda fake: aksk_auth(AK, SK),
        {"clock_offset_s": 1200.0},  # the gateway's clock runs 20 min ahead of ours: our X-Sdk-Date is stale
        ("APIGW.0303", "clock", "NTP"),
    ),
    "unknown-token": (
        lambda fake: token_auth("MIIunknown-token-of-another-region"),
        {},
        ("APIGW.0301", "SFS_CLEANUP_AUTH_TOKEN"),
    ),
}


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
def test_credentials_that_cannot_work_abort_the_run_with_one_line_and_no_storm(
    make_cluster: Any, tmp_path: Path, case: str
) -> None:
    auth, overrides, must_name = BAD_CREDENTIALS[case]
    cluster, fake = make_cluster(
        auth,
        fake_config(shares=4, tasks_per_share=150, latency_ms=5, **overrides),
        SFS_CLEANUP_BATCH_CONCURRENCY=str(BATCH_CONCURRENCY),
        SFS_CLEANUP_BATCH_SIZE="50",
    )
    manifest = tmp_path / f"{case}.jsonl"
    planned = write_manifest(fake, manifest, limit=400)  # planning needs no API call: only workers authenticate
    cluster.start_worker("w1", concurrency=ERROR_WORKERS)  # two pool processes, each with its own auth

    result = cluster.cli("purge", "--manifest", str(manifest), "--wait", "--json", timeout=120)

    stats = fake.stats()
    report = json.loads(result.stdout.strip().splitlines()[-1])
    reason = report["reason"] or ""
    print(
        f"{case}: exit {result.returncode}, status {report['status']}, API requests {stats['requests_total']} "
        f"(401s {stats['auth_failures']}), IAM requests {stats['iam_requests']}, outcomes "
        f"{ {k: v for k, v in report['outcomes'].items() if v} }\n  reason: {reason}"
    )
    assert report["status"] == "aborted", report
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert report["selected"] == planned == 400
    assert_adds_up(report)
    # One line, saying what to fix.
    assert reason and "\n" not in reason
    for words in must_name:
        assert words.lower() in reason.lower(), f"the reason should name {words!r}: {reason}"
    # No retry storm: only what was already in flight when the first refusal stopped the run.
    assert stats["requests_total"] <= IN_FLIGHT_BOUND, stats
    assert stats["deletes_accepted"] == 0
    assert report["outcomes"]["aborted"] >= planned - IN_FLIGHT_BOUND
    assert report["outcomes"]["failed"] <= IN_FLIGHT_BOUND
    if case == "wrong-iam-password":
        assert stats["requests_total"] == 0  # nothing reaches the API without a token
        # The refusal is remembered fleet-wide (in Redis); one login per process at most here (the
        # strict "one login" is test_a_refused_iam_login_is_tried_once_by_a_fleet_starting_together).
        assert 1 <= stats["iam_requests"] <= ERROR_WORKERS
        assert stats["tokens_issued"] == 0
    else:
        assert stats["iam_requests"] == 0
        assert 1 <= stats["auth_failures"] == stats["requests_total"]


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
def test_the_cli_listing_with_credentials_that_cannot_work_says_what_to_fix(make_cluster: Any, case: str) -> None:
    auth, overrides, must_name = BAD_CREDENTIALS[case]
    cluster, fake = make_cluster(auth, fake_config(**overrides))

    result = cluster.cli("purge", "--wait", "--json", timeout=120)  # lists the shares itself: no run is planned

    stats = fake.stats()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    # Anything else on stderr must be a log record (the CLI logs in console form: time, level,
    # event), never a stack trace or a JSON line mixed into the output.
    logged = [line for line in lines if not line.startswith("error:")]
    assert all(_CONSOLE_LOG.match(line) and not _is_json_object(line) for line in logged), lines
    print(f"{case}: exit {result.returncode}, API requests {stats['requests_total']}, IAM {stats['iam_requests']}")
    print("  " + "\n  ".join(lines))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert len(errors) == 1, lines
    for words in must_name:
        assert words.lower() in errors[0].lower(), f"the error should name {words!r}: {errors[0]}"
    assert stats["requests_total"] <= 1
    assert stats["iam_requests"] <= 1
    assert stats["deletes_accepted"] == 0


def test_a_refused_iam_login_is_tried_once_by_a_fleet_starting_together(redis_client: Any) -> None:
    """Ten worker processes (ten providers, each with its own memory, one Redis) ask for a token
    at the same moment with a wrong password: IAM must see one login, not one per process."""
    import httpx
    from pydantic import SecretStr

    from worker.api.auth import AuthError, IamLogin, IamTokenProvider

    fleet = 10
    with FakeApi(fake_config(shares=1, tasks_per_share=5)) as fake:
        login = IamLogin(
            endpoint=fake.url,
            user=USER,
            password=SecretStr("Not-The-Password-1"),
            domain=DOMAIN,
            project_id=fake.project_id,
        )
        clients = [httpx.Client(timeout=10) for _ in range(fleet)]
        providers = [IamTokenProvider(login, http=c, redis_client=redis_client) for c in clients]
        barrier = threading.Barrier(fleet)
        errors: list[str] = []

        def ask(provider: IamTokenProvider) -> None:
            barrier.wait()
            try:
                provider.token()
            except AuthError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=ask, args=(p,)) for p in providers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for c in clients:
            c.close()
        stats = fake.stats()

    print(f"{fleet} processes, wrong password: IAM requests {stats['iam_requests']}")
    assert len(errors) == fleet and all("SFS_CLEANUP_IAM_PASSWORD" in e for e in errors)
    assert stats["iam_requests"] == 1, stats["iam_by_status"]
