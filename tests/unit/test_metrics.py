"""The Prometheus exporter against a real Redis: a crafted run, queues and the limiter, as exposition text."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from sandbox.redis_server import free_port
from scheduler.metrics import FleetCollector, broker_queue_depth, registry_for, serve_metrics
from worker.api.answers import ApiAnswer, Verdict
from worker.apimetrics import BUCKETS, ApiStats
from worker.celery_app import create_app
from worker.ledger import Attempt, Audit, Batch, FinalOutcome, Outcome, RunStatus
from worker.ledger.keys import Keys
from worker.ratelimit import FleetLimiter
from worker.settings import Settings, load_settings

PROJECT = "0123456789abcdef0123456789abcdef"


def settings_for(url: str, **extra: object) -> Settings:
    return load_settings(redis_url=url, **extra)


def scrape(settings: Settings, **collector_args: object) -> str:
    return generate_latest(registry_for(settings, **collector_args)).decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in exposition text (labels must match exactly), or None."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if found == labels:
            return float(match.group(4))
    return None


def final(outcome: Outcome) -> FinalOutcome:
    return FinalOutcome(outcome, time.time(), attempts=1, status=202, request_id="rid")


def crafted_run(audit: Audit, run_id: str, *, trigger: str = "schedule") -> list[Batch]:
    """A running run of 5 tasks in 2 batches: 2 deleted, 1 already gone, 1 failed, 1 to do."""
    audit.create_run(run_id, {"trigger": trigger, "dry_run": False})
    audit.add_batches(run_id, [(0, "share-a", ["t1", "t2", "t3"]), (1, "share-b", ["t4", "t5"])])
    assert audit.freeze(run_id, 5, batches=2) is RunStatus.RUNNING
    b0, b1 = (audit.batch(run_id, n) for n in (0, 1))
    assert b0 is not None and b1 is not None
    now = time.time()
    audit.record(b0, "t1", attempt=Attempt(1, now, 500, "retryable"), bump="retries")
    audit.record(b0, "t1", attempt=Attempt(2, now, 429, "throttled"), bump="throttled")
    audit.record(b0, "t1", attempt=Attempt(3, now, 202, "deleted", "r3"), final=final(Outcome.DELETED))
    audit.record(b0, "t2", attempt=Attempt(1, now, 202, "deleted", "r4"), final=final(Outcome.DELETED))
    audit.record(b0, "t3", attempt=Attempt(1, now, 400, "gone", "r5"), final=final(Outcome.ALREADY_GONE))
    audit.record(b1, "t4", attempt=Attempt(1, now, 403, "failed", "r6"), final=final(Outcome.FAILED))
    return [b0, b1]


def test_a_running_run_is_exported_with_its_progress_outcomes_retries_and_429s(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = settings_for(redis_url)
    crafted_run(Audit(redis_client), "20261129-020000-aaaaaa")

    text = scrape(settings)

    run = {"run_id": "20261129-020000-aaaaaa"}
    assert sample(text, "sfs_cleanup_up") == 1.0
    assert sample(text, "sfs_cleanup_runs_active") == 1.0
    assert sample(text, "sfs_cleanup_run_info", **run, status="running", trigger="schedule", dry_run="false") == 1.0
    assert sample(text, "sfs_cleanup_run_selected_tasks", **run) == 5.0
    assert sample(text, "sfs_cleanup_run_done_tasks", **run) == 4.0
    assert sample(text, "sfs_cleanup_run_pending_tasks", **run) == 1.0
    assert sample(text, "sfs_cleanup_run_open_batches", **run) == 1.0  # batch 0 is complete
    assert sample(text, "sfs_cleanup_run_outcomes_total", **run, outcome="deleted") == 2.0
    assert sample(text, "sfs_cleanup_run_outcomes_total", **run, outcome="already_gone") == 1.0
    assert sample(text, "sfs_cleanup_run_outcomes_total", **run, outcome="failed") == 1.0
    assert sample(text, "sfs_cleanup_run_outcomes_total", **run, outcome="aborted") == 0.0
    assert sample(text, "sfs_cleanup_run_attempts_total", **run) == 6.0
    assert sample(text, "sfs_cleanup_run_retries_total", **run) == 1.0
    assert sample(text, "sfs_cleanup_run_throttled_total", **run) == 1.0
    created = sample(text, "sfs_cleanup_run_created_timestamp_seconds", **run)
    assert created is not None and abs(created - time.time()) < 60
    assert sample(text, "sfs_cleanup_run_finished_timestamp_seconds", **run) is None  # still running
    assert "# TYPE sfs_cleanup_run_outcomes_total counter" in text
    assert "# TYPE sfs_cleanup_run_done_tasks gauge" in text


def test_a_finished_run_stops_being_active_and_sets_the_last_run_time(
    redis_url: str, redis_client: redis.Redis
) -> None:
    audit = Audit(redis_client)
    _, b1 = crafted_run(audit, "r-done", trigger="message")
    audit.record(b1, "t5", final=final(Outcome.SKIPPED))

    text = scrape(settings_for(redis_url))

    assert sample(text, "sfs_cleanup_runs_active") == 0.0
    assert sample(text, "sfs_cleanup_run_info", run_id="r-done", status="finished", trigger="message", dry_run="false")
    assert sample(text, "sfs_cleanup_run_pending_tasks", run_id="r-done") == 0.0
    assert sample(text, "sfs_cleanup_run_open_batches", run_id="r-done") is None
    ended = sample(text, "sfs_cleanup_run_finished_timestamp_seconds", run_id="r-done")
    assert (
        ended is not None
        and sample(text, "sfs_cleanup_last_run_finished_timestamp_seconds", trigger="message") == ended
    )
    outcomes = [sample(text, "sfs_cleanup_run_outcomes_total", run_id="r-done", outcome=o.value) for o in Outcome]
    assert sum(v or 0 for v in outcomes) == sample(text, "sfs_cleanup_run_selected_tasks", run_id="r-done") == 5.0


def test_runs_are_bounded_to_the_newest_plus_every_active_one(redis_url: str, redis_client: redis.Redis) -> None:
    audit = Audit(redis_client)
    crafted_run(audit, "old-active")  # the oldest run, still running
    for n in range(5):
        run_id = f"done-{n}"
        audit.create_run(run_id, {"trigger": "cli"})
        audit.freeze(run_id, 0)  # nothing selected: over at once
    audit.create_run("old-nightly", {"trigger": "schedule"})
    audit.freeze("old-nightly", 0)
    # Scores are creation times; make the order explicit.
    redis_client.zadd(audit.keys.runs, {"old-nightly": 0, "old-active": 1, **{f"done-{n}": 10 + n for n in range(5)}})

    text = scrape(settings_for(redis_url), recent_runs=2, scan_runs=50)

    exported = set(re.findall(r'sfs_cleanup_run_selected_tasks\{run_id="([^"]+)"\}', text))
    assert exported == {"done-4", "done-3", "old-active"}
    # The newest end per trigger looks at every scanned run, exported or not (for "nightly ran" alerts).
    nightly_end = float(audit.run("old-nightly")["finished_at"])
    assert sample(text, "sfs_cleanup_last_run_finished_timestamp_seconds", trigger="schedule") == nightly_end
    assert sample(text, "sfs_cleanup_last_run_finished_timestamp_seconds", trigger="cli") is not None


def test_queue_depth_counts_every_priority_list_and_unacked_jobs(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.lpush("sfs.delete", "a", "b", "c")
    redis_client.lpush("sfs.delete\x06\x169", "d")
    redis_client.lpush("sfs.control", "e")
    redis_client.hset("unacked", mapping={"tag1": "x", "tag2": "y"})

    text = scrape(settings_for(redis_url))

    assert sample(text, "sfs_cleanup_queue_messages", queue="sfs.delete") == 4.0
    assert sample(text, "sfs_cleanup_queue_messages", queue="sfs.control") == 1.0
    assert sample(text, "sfs_cleanup_unacked_messages") == 2.0


def test_queue_depth_goes_through_kombu_so_an_empty_queue_is_0_and_priorities_count(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = create_app(settings_for(redis_url))
    assert broker_queue_depth(app) == 0  # no list in Redis at all: kombu's "not found" is an empty queue
    for priority in (0, 3, 9):
        app.send_task("sfs.purge_batch", args=["r", priority], queue="sfs.delete", priority=priority)
    assert broker_queue_depth(app) == 3
    assert len(redis_client.keys("sfs.delete*")) == 3  # kombu really spread them over its priority lists

    text = scrape(settings_for(redis_url), app=app)
    assert sample(text, "sfs_cleanup_queue_messages", queue="sfs.delete") == 3.0
    assert sample(text, "sfs_cleanup_queue_messages", queue="sfs.control") == 0.0


def _answer(status: int, code: str | None = None, latency_ms: float = 20.0) -> ApiAnswer:
    return ApiAnswer(
        "DELETE", "/x", status, Verdict.OK if status < 300 else Verdict.RETRYABLE, None, code, None, latency_ms
    )


def test_api_histogram_and_answers_sum_every_process(redis_url: str) -> None:
    fleet = [ApiStats(redis.Redis.from_url(redis_url), "sfs", flush_interval_s=3600) for _ in range(2)]
    for stats in fleet:
        stats.observe("delete", _answer(202, latency_ms=3))  # bucket 0.005
        stats.observe("delete", _answer(500, "SFS.TURBO.0005", latency_ms=80))  # bucket 0.1
        stats.observe("delete", _answer(0, latency_ms=60_000))  # +Inf: no answer
        stats.observe("list", _answer(200, latency_ms=300))  # bucket 0.5
        assert stats.flush()
        stats.close(timeout=1)

    text = scrape(settings_for(redis_url))

    delete = {"operation": "delete"}
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_count", **delete) == 6.0
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_sum", **delete) == pytest.approx(2 * 60.083)
    cumulative = {"0.005": 2.0, "0.05": 2.0, "0.1": 4.0, "10.0": 4.0, "+Inf": 6.0}
    for le, count in cumulative.items():
        assert sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", le=le, **delete) == count, le
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", le="0.25", operation="list") == 0.0
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", le="0.5", operation="list") == 2.0
    # Every operation is served, also before its first call (rate() then starts from 0).
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_count", operation="show") == 0.0
    answers = {
        ("202", "none"): 2.0,
        ("500", "SFS.TURBO.0005"): 2.0,
        ("none", "none"): 2.0,
    }
    for (status, code), count in answers.items():
        assert sample(text, "sfs_cleanup_api_responses_total", operation="delete", status=status, error_code=code) == (
            count
        )
    assert sample(text, "sfs_cleanup_api_responses_total", operation="list", status="200", error_code="none") == 2.0
    assert "# TYPE sfs_cleanup_api_request_duration_seconds histogram" in text


def test_api_buckets_of_another_layout_fold_into_the_next_larger_bound(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # A worker of another version may store bounds this exporter does not have: none is lost or lowered.
    redis_client.hset(Keys("sfs").api_metrics, mapping={"b|show|0.003": 1, "b|show|0.2": 2, "b|show|99": 4})
    text = scrape(settings_for(redis_url))
    show = {"operation": "show"}
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", le="0.005", **show) == 1.0
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", le="0.1", **show) == 1.0
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", le="0.25", **show) == 3.0
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_bucket", le=repr(BUCKETS[-1]), **show) == 3.0
    assert sample(text, "sfs_cleanup_api_request_duration_seconds_count", **show) == 7.0


def test_workers_online_counts_recent_heartbeats_only(redis_url: str, redis_client: redis.Redis) -> None:
    now = time.time()
    redis_client.zadd(Keys("sfs").workers, {"a:1": now - 5, "b:2": now - 30, "dead:3": now - 300})
    assert sample(scrape(settings_for(redis_url)), "sfs_cleanup_workers_online") == 2.0

    worker = ApiStats(redis.Redis.from_url(redis_url), "sfs", heartbeat_member="c:4", flush_interval_s=3600)
    assert worker.flush()  # a worker process's flush writes its heartbeat
    assert sample(scrape(settings_for(redis_url)), "sfs_cleanup_workers_online") == 3.0
    worker.close(timeout=1)


def test_redis_memory_and_its_limit(redis_url: str, redis_client: redis.Redis) -> None:
    previous = redis_client.config_get("maxmemory")["maxmemory"]
    redis_client.config_set("maxmemory", 512 * 1024 * 1024)
    try:
        text = scrape(settings_for(redis_url))
    finally:
        redis_client.config_set("maxmemory", previous)
    used = sample(text, "sfs_cleanup_redis_used_memory_bytes")
    assert used is not None and 100_000 < used < 512 * 1024 * 1024
    assert sample(text, "sfs_cleanup_redis_maxmemory_bytes") == 512 * 1024 * 1024


def test_the_fleet_limiter_state_is_exported_when_the_api_is_configured(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = settings_for(redis_url, project_id=PROJECT, api_endpoint="https://sfs.example.com", rate_limit=20.0)
    text = scrape(settings)
    assert sample(text, "sfs_cleanup_ratelimit_configured_rps") == 20.0
    assert sample(text, "sfs_cleanup_ratelimit_ceiling_rps") == 20.0
    assert sample(text, "sfs_cleanup_ratelimit_throttled_total") == 0.0
    assert sample(text, "sfs_cleanup_ratelimit_circuit_state", state="closed") == 1.0

    FleetLimiter.from_settings(redis_client, settings).throttled(5.0)  # one 429 with Retry-After: 5
    text = scrape(settings)

    assert sample(text, "sfs_cleanup_ratelimit_throttled_total") == 1.0
    effective = sample(text, "sfs_cleanup_ratelimit_effective_rps")
    assert effective is not None and effective < 20.0
    penalty = sample(text, "sfs_cleanup_ratelimit_penalty_remaining_seconds")
    assert penalty is not None and 3.0 < penalty <= 5.0
    # Drawn at the full rate (a fresh limiter): the ceiling sits at 0.9 x it until the pause ends.
    assert sample(text, "sfs_cleanup_ratelimit_ceiling_rps") == pytest.approx(18.0)
    assert sample(text, "sfs_cleanup_ratelimit_circuit_state", state="open") == 0.0

    no_api = scrape(settings_for(redis_url))
    assert "sfs_cleanup_ratelimit_" not in no_api


def test_an_unreachable_redis_gives_up_0_and_no_stale_figures() -> None:
    settings = settings_for(f"redis://127.0.0.1:{free_port()}/0")
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)

    text = generate_latest(_registry(FleetCollector(settings, redis_client=client))).decode()

    assert sample(text, "sfs_cleanup_up") == 0.0
    assert "sfs_cleanup_queue_messages" not in text and "sfs_cleanup_run_" not in text
    assert "sfs_cleanup_api_" not in text and "sfs_cleanup_workers_online" not in text


def test_serve_metrics_answers_on_loopback(redis_url: str, redis_client: redis.Redis) -> None:
    crafted_run(Audit(redis_client), "served")
    server, _thread = serve_metrics(settings_for(redis_url), 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            text = answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert sample(text, "sfs_cleanup_run_done_tasks", run_id="served") == 4.0
    assert server.server_address[0] == "127.0.0.1"


@pytest.mark.parametrize("port", [None, 9999])
def test_the_metrics_command_parses_its_options(port: int | None) -> None:
    import typer
    from typer.testing import CliRunner

    from scheduler.metrics import serve as module

    calls: list[tuple[int, str]] = []

    def fake_serve(settings: Settings, port: int, addr: str = "127.0.0.1") -> tuple[object, object]:
        calls.append((port, addr))
        raise OSError(98, "Address already in use")

    app = typer.Typer()
    app.command()(module.metrics)
    app.command("other")(lambda: None)  # two commands: typer keeps "metrics" as a subcommand
    original = module.serve_metrics
    module.serve_metrics = fake_serve  # type: ignore[assignment]
    try:
        args = ["metrics"] + (["--port", str(port)] if port else [])
        result = CliRunner().invoke(app, args, env={"SFS_CLEANUP_METRICS_PORT": "9100"})
    finally:
        module.serve_metrics = original
    assert result.exit_code == 2, result.output
    assert calls == [(port or 9100, "127.0.0.1")]
    assert "cannot listen on 127.0.0.1" in result.output


def _registry(collector: FleetCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
