"""The deletion path's script calls (``worker.luascripts``) against a real Redis.

What the ledger and the limiter count on: replies in order, one round trip for many calls, a
script Redis forgot (a restart, a failover) loaded and run exactly once, an error reply raised
without leaving the pooled connection out of step, ``WAIT`` on the connection that wrote, and a
reply lost on the way retried on a new connection as redis-py retries a command.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.proxy import DropReplyProxy
from worker.luascripts import LuaScripts, RegisteredScripts, scripts_for
from worker.runtime import redis_client
from worker.settings import Settings

pytestmark = pytest.mark.integration

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL_ON = "if ARGV[1] == 'fail' then return redis.error_reply('ERR refused by the script') end return ARGV[1]"
SOURCES = {"incr": INCR, "fail_on": FAIL_ON}


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


@pytest.fixture
def key() -> str:
    return f"t:{secrets.token_hex(4)}"


def test_many_calls_answer_in_order_in_one_round_trip(client: redis.Redis, key: str) -> None:
    scripts = LuaScripts(client, SOURCES)
    client.script_load(INCR)
    before = _calls(client)
    replies = scripts.run([("incr", [key], [n]) for n in (1, 2, 3, 4)])
    after = _calls(client)
    assert replies == [1, 3, 6, 10]
    # Four EVALSHA and nothing else: no SCRIPT EXISTS before them (redis-py's pipeline sends one).
    sent = {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
    assert sent == {"evalsha": 4, "info": 1}
    assert scripts.call("incr", [key], [5]) == 15


def _calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command name as Redis counts them (``INFO commandstats``), but commands scripts run."""
    stats = client.info("commandstats")
    inner = {"cmdstat_incrby"}
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items() if name not in inner}


def test_a_script_redis_forgot_is_loaded_and_runs_once(client: redis.Redis, key: str) -> None:
    scripts = LuaScripts(client, SOURCES)
    assert scripts.call("incr", [key], [1]) == 1
    client.script_flush()  # what a restart or a failover to a replica without the script looks like
    assert scripts.run([("incr", [key], [1]), ("incr", [key], [1])]) == [2, 3]
    assert int(client.get(key) or 0) == 3  # each call ran once, none twice
    client.script_flush()
    assert scripts.run([("incr", [key], [10])], transaction=True) == [13]


def test_an_error_reply_is_raised_after_every_reply_is_read(client: redis.Redis, key: str) -> None:
    scripts = LuaScripts(client, SOURCES)
    with pytest.raises(redis.ResponseError, match="refused by the script"):
        scripts.run([("fail_on", [key], ["a"]), ("fail_on", [key], ["fail"]), ("incr", [key], [7])])
    assert int(client.get(key) or 0) == 7  # the calls around the refused one ran
    # The pooled connection is in step: the next calls get their own replies, not left-overs.
    for _ in range(3):
        assert scripts.run([("fail_on", [key], ["x"]), ("incr", [key], [1])]) == ["x", 8 + _]


def test_a_transaction_and_a_wait_on_the_writing_connection(client: redis.Redis, key: str) -> None:
    scripts = LuaScripts(client, SOURCES)
    replies = scripts.run([("incr", [key], [2]), ("incr", [key], [3])], transaction=True, then=("WAIT", 0, 10))
    assert replies == [2, 5, 0]  # the two calls, then WAIT's count of replicas (none here)
    assert scripts.run([("incr", [key], [1])], then=("WAIT", 0, 10)) == [6, 0]


def test_a_lost_reply_is_retried_on_a_new_connection(redis_url: str, key: str) -> None:
    """As redis-py retries a command: the script ran, its reply was lost, it runs again. Every
    caller's script is safe to repeat (the ledger's by design, the limiter's costs one slot)."""
    direct = redis.Redis.from_url(redis_url)
    with DropReplyProxy(redis_url) as proxy:
        client = redis_client(Settings(redis_url=proxy.url))
        try:
            scripts = LuaScripts(client, SOURCES)
            assert scripts.call("incr", [key], [1]) == 1  # loads the script, opens the connection
            proxy.drop_reply_after("EVALSHA")
            assert scripts.call("incr", [key], [1]) == 3  # ran, lost, ran again
            assert proxy.dropped == 1 and proxy.connections == 2
        finally:
            client.close()
    assert int(direct.get(key) or 0) == 3
    direct.close()


def test_a_redis_that_is_gone_raises_a_connection_error(key: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        LuaScripts(client, SOURCES).call("incr", [key], [1])


def test_a_client_without_a_pool_goes_through_its_register_script() -> None:
    calls: list[tuple[str, list[Any], list[Any]]] = []

    class Stand:
        def register_script(self, source: str) -> Any:
            def run(keys: list[Any], args: list[Any]) -> list[Any]:
                calls.append((source, keys, args))
                return ["ok"]

            return run

    scripts = scripts_for(Stand(), SOURCES)
    assert isinstance(scripts, RegisteredScripts)
    assert scripts.call("incr", ["k"], [1]) == ["ok"]
    assert calls == [(INCR, ["k"], [1])]
