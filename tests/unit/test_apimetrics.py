"""ApiStats against a real Redis: bounded labels, flushes that merge, and counts kept while Redis refuses them."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sandbox.redis_server import free_port
from tests.support.proxy import DropReplyProxy
from worker.api.answers import ApiAnswer, Verdict
from worker.apimetrics import (
    BUCKETS,
    KNOWN_CODES,
    ApiStats,
    Operation,
    bucket_label,
    code_label,
    status_label,
)
from worker.ledger.keys import Keys

API_KEY = Keys("sfs").api_metrics


def answer(status: int, code: str | None = None, latency_ms: float = 20.0) -> ApiAnswer:
    verdict = Verdict.OK if 200 <= status < 300 else Verdict.RETRYABLE
    return ApiAnswer("DELETE", "/v1/x", status, verdict, error_code=code, latency_ms=latency_ms)


def stored(client: redis.Redis) -> dict[str, float]:
    """The fleet hash without the per-process flush numbers."""
    return {k: float(v) for k, v in client.hgetall(API_KEY).items() if not k.startswith("f|")}


@pytest.fixture
def stats(redis_url: str) -> Iterator[ApiStats]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    s = ApiStats(client, "sfs", flush_interval_s=3600)  # flushed by the test, not the thread
    yield s
    s.close(timeout=1)
    client.close()


def test_label_values_are_bounded() -> None:
    assert status_label(0) == "none"
    assert status_label(202) == "202"
    assert status_label(503) == "503"
    assert status_label(999) == status_label(42) == "other"
    assert code_label(None) == code_label("") == "none"
    assert code_label("SFS.TURBO.0106") == "SFS.TURBO.0106"
    assert code_label("APIG.0308") == "APIGW.0308"  # old spelling, normalised like the classifier does
    assert code_label("SFS.TURBO.4711") == code_label("made up by a proxy") == "other"
    assert {"SFS.TURBO.0005", "SFS.TURBO.0011", "APIGW.0301", "SFS.TURBO.0002"} <= KNOWN_CODES
    # A thousand distinct codes and statuses still make a handful of label values.
    values = {(status_label(n), code_label(f"X.{n}")) for n in range(1000)}
    assert len({c for _, c in values}) == 1
    assert len({s for s, _ in values}) == 502  # 100..599, "none" and "other"


def test_bucket_bounds_are_inclusive_and_beyond_the_last_is_inf() -> None:
    assert bucket_label(0.0) == "0.005"
    assert bucket_label(0.005) == "0.005"
    assert bucket_label(0.0051) == "0.01"
    assert bucket_label(BUCKETS[-1]) == repr(BUCKETS[-1])
    assert bucket_label(BUCKETS[-1] + 0.001) == "+Inf"


def test_an_unknown_operation_is_refused(stats: ApiStats) -> None:
    bad: Operation = "patch"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="unknown API operation"):
        stats.observe(bad, answer(202))
    assert stats.pending() == {}


def test_a_flush_writes_counts_buckets_and_sums(stats: ApiStats, redis_client: redis.Redis) -> None:
    stats.observe("delete", answer(202, latency_ms=12))
    stats.observe("delete", answer(500, "SFS.TURBO.0005", latency_ms=40))
    stats.observe("delete", answer(0, latency_ms=30_000))  # a timeout: no answer at all
    stats.observe("show", answer(200, latency_ms=3))
    stats.observe("list", answer(400, "SFS.TURBO.9999", latency_ms=700))

    assert stats.flush() is True

    assert stored(redis_client) == {
        "n|delete|202|none": 1,
        "n|delete|500|SFS.TURBO.0005": 1,
        "n|delete|none|none": 1,
        "n|show|200|none": 1,
        "n|list|400|other": 1,
        "b|delete|0.025": 1,
        "b|delete|0.05": 1,
        "b|delete|+Inf": 1,
        "b|show|0.005": 1,
        "b|list|1.0": 1,
        "s|delete": pytest.approx(30.052),
        "s|show": pytest.approx(0.003),
        "s|list": pytest.approx(0.7),
    }
    assert stats.pending() == {}


def test_flushes_of_several_processes_merge(redis_url: str, redis_client: redis.Redis) -> None:
    fleet = [ApiStats(redis.Redis.from_url(redis_url), "sfs", flush_interval_s=3600) for _ in range(3)]
    for n, s in enumerate(fleet):
        for _ in range(n + 1):
            s.observe("delete", answer(202, latency_ms=100))
        assert s.flush()
    fleet[0].observe("delete", answer(202, latency_ms=100))  # a second flush adds, it does not replace
    assert fleet[0].flush()

    got = stored(redis_client)
    assert got["n|delete|202|none"] == 7 == got["b|delete|0.1"]
    assert got["s|delete"] == pytest.approx(0.7)
    for s in fleet:
        s.close(timeout=1)


def test_redis_down_keeps_the_counts_for_the_next_flush(redis_url: str, redis_client: redis.Redis) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    stats = ApiStats(dead, "sfs", flush_interval_s=3600)
    stats.observe("delete", answer(503, latency_ms=5))
    stats.observe("delete", answer(503, latency_ms=5))

    assert stats.flush() is False  # swallowed: never raises into a deletion
    assert stats.pending()["n|delete|503|none"] == 2
    stats.close(timeout=1)  # the last flush fails quietly too


def test_a_full_redis_refuses_the_flush_and_the_counts_arrive_once_it_has_room(
    stats: ApiStats, redis_client: redis.Redis
) -> None:
    stats.observe("delete", answer(202))
    assert stats.flush()
    previous = redis_client.config_get("maxmemory")["maxmemory"]
    redis_client.config_set("maxmemory", 1)  # with noeviction every write is refused: "OOM command not allowed"
    try:
        stats.observe("delete", answer(202))
        assert stats.flush() is False
        stats.observe("delete", answer(202))  # counted meanwhile, next to the flush that failed
        assert stats.flush() is False
        assert stats.pending()["n|delete|202|none"] == 2
    finally:
        redis_client.config_set("maxmemory", previous)

    assert stats.flush() is True
    assert stored(redis_client)["n|delete|202|none"] == 3
    assert stats.pending() == {}


def test_a_flush_whose_reply_is_lost_counts_once(redis_url: str, redis_client: redis.Redis) -> None:
    with DropReplyProxy(redis_url) as proxy:
        client = redis.Redis.from_url(proxy.url, socket_timeout=2)
        stats = ApiStats(client, "sfs", flush_interval_s=3600)
        stats.observe("delete", answer(202))
        assert stats.flush()  # loads the script, so the next flush is one EVALSHA
        for _ in range(5):
            stats.observe("delete", answer(202))
        proxy.drop_reply_after("EVALSHA")
        stats.flush()  # Redis ran it; redis-py (or our next flush) sends it again
        stats.flush()
        assert not proxy.armed
        stats.close(timeout=1)
        client.close()
    assert stored(redis_client)["n|delete|202|none"] == 6


def test_the_thread_flushes_on_its_own_and_keeps_the_heartbeat(redis_url: str, redis_client: redis.Redis) -> None:
    stats = ApiStats(redis.Redis.from_url(redis_url), "sfs", heartbeat_member="host-a:42", flush_interval_s=0.05)
    stats.observe("show", answer(200))  # starts the thread
    deadline = time.monotonic() + 5
    while "n|show|200|none" not in stored(redis_client) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stored(redis_client)["n|show|200|none"] == 1
    beat = redis_client.zscore(Keys("sfs").workers, "host-a:42")
    assert beat is not None and abs(beat - time.time()) < 5
    stats.close(timeout=1)


def test_old_heartbeats_and_flush_numbers_are_forgotten(redis_url: str, redis_client: redis.Redis) -> None:
    keys = Keys("sfs")
    long_ago = time.time() - 2 * 86400
    redis_client.zadd(keys.workers, {"dead-host:7": long_ago, "recent-host:8": time.time() - 120})
    redis_client.hset(keys.api_metrics, mapping={"f|dead-host:7:aaaa": f"9 {int(long_ago)}", "n|list|200|none": 4})
    stats = ApiStats(redis.Redis.from_url(redis_url), "sfs", heartbeat_member="host-b:1", flush_interval_s=3600)
    assert stats.flush()  # the first flush of a worker process writes its heartbeat and tidies up
    assert set(redis_client.zrange(keys.workers, 0, -1)) == {"recent-host:8", "host-b:1"}
    assert redis_client.hget(keys.api_metrics, "f|dead-host:7:aaaa") is None
    assert redis_client.hget(keys.api_metrics, "n|list|200|none") == "4"
    stats.close(timeout=1)


def _child_pending(stats: ApiStats, queue: multiprocessing.Queue[dict[str, float]]) -> None:
    queue.put(stats.pending())


def test_a_forked_child_does_not_inherit_the_parents_counts(stats: ApiStats) -> None:
    stats.observe("delete", answer(202))
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[dict[str, float]] = ctx.Queue()
    child = ctx.Process(target=_child_pending, args=(stats, queue))
    child.start()
    child_counts = queue.get(timeout=10)
    child.join(10)
    assert child.exitcode == 0
    assert child_counts == {}  # else the parent's calls would be counted twice
    assert stats.pending()["n|delete|202|none"] == 1


@pytest.mark.parametrize("op", ["delete", "show", "list"])
def test_observe_is_cheap(stats: ApiStats, op: Operation) -> None:
    # It sits on the deletion path: no Redis round trip, a lock and three dict increments.
    one = answer(202)
    start = time.perf_counter()
    for _ in range(20_000):
        stats.observe(op, one)
    per_call = (time.perf_counter() - start) / 20_000
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per observe"
    assert stats.pending()[f"n|{op}|202|none"] == 20_000
