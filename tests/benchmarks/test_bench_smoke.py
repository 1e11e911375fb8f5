"""The rate-limit benchmark's code runs: a tiny run of each kind, and the JSON it writes.

This proves the harness (Redis, the fake as a subprocess, worker processes, a purge, the
fake's counts) and the results schema, not the figures: there is no timing threshold here.
The real benchmark is ``python -m tests.benchmarks.bench_ratelimit``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.bench_ratelimit import main
from tests.benchmarks.common import achieved_rate, busiest_window, would_throttle

pytestmark = pytest.mark.integration

DELETIONS = 100
R = 50.0


def test_measures_on_known_stamps() -> None:
    even = [i * 0.101 for i in range(21)]  # just under 10 per second, for 2 s
    assert busiest_window(even) == 10
    assert achieved_rate(even) == pytest.approx(1 / 0.101)
    assert would_throttle(even, 10) == 0
    assert would_throttle(even, 5) > 0
    assert busiest_window([]) == 0 and achieved_rate([1.0]) == 0.0


def test_a_tiny_benchmark_writes_sane_figures(tmp_path: Path) -> None:
    out = tmp_path / "ratelimit.json"
    args = ["--workers", "1", "--rates", f"{R:g}", "--deletions", str(DELETIONS), "--kinds", "ours,builtin"]
    assert main([*args, "--output", str(out)]) == 0

    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "ratelimit"
    assert doc["date"] and doc["machine"]["cpu_count"] >= 1 and doc["machine"]["python"]
    assert doc["params"]["rates"] == [R] and doc["params"]["workers"] == [1]
    runs = {run["spec"]["kind"]: run for run in doc["runs"]}
    assert set(runs) == {"ours", "builtin"}
    for kind, run in runs.items():
        server, spec = run["server"], run["spec"]
        assert "error" not in run, run
        assert spec["workers"] == 1 and spec["deletions"] == DELETIONS and run["r"] == R
        assert server["deletes_accepted"] == DELETIONS, kind
        assert server["duplicate_deletes"] == 0
        assert server["delete_requests"] == sum(server["delete_statuses"].values()) >= DELETIONS
        assert 1 <= server["busiest_second_accepted"] <= DELETIONS
        assert server["busiest_second_accepted"] <= server["busiest_second_delete"] <= server["delete_requests"]
        assert 0 <= server["busiest_second_after_2s"] <= server["busiest_second_accepted"]
        assert server["first_delete_at"] < server["last_delete_at"]
        assert server["achieved_rps"] > 0 and server["steady_rps"] > 0
        assert run["ratios"]["busiest_over_r"] == pytest.approx(server["busiest_second_delete"] / R, abs=1e-3)
        assert run["ratios"]["steady_over_r"] == pytest.approx(server["steady_rps"] / R, abs=1e-2)
        assert run["failed"] == 0 and run["targets"]["all_deleted"] is True
        assert set(run["targets"]) >= {"achieved_ge_0_95_limit", "busiest_le_limit_plus_burst", "zero_429"}
        assert run["cpu_s"]["workers"] > 0 and run["cpu_s"]["fake"] > 0
        assert run["wall_s"] > 0
    ours = runs["ours"]
    assert ours["spec"]["server_limit"] == R and ours["spec"]["burst"] >= 1
    assert ours["audit"]["status"] == "finished" and ours["audit"]["exit_code"] == 0
    assert ours["audit"]["outcomes"]["deleted"] == DELETIONS
    # Our audit counts every DELETE the server answered (429s included) and nothing else.
    assert ours["audit"]["attempts"] == ours["server"]["delete_requests"]
    assert ours["audit"]["throttled"] == ours["server"]["delete_statuses"].get("429", 0)
    assert ours["audit"]["rate"]["busiest_second"] >= 1
    assert 1 <= ours["audit"]["sent_busiest_second"] <= DELETIONS
    assert ours["stall"]["samples"] > 0 and ours["stall"]["max_ms"] >= ours["stall"]["p99_ms"] >= 0
    builtin = runs["builtin"]
    assert builtin["spec"]["server_limit"] == 0 and builtin["server"]["answered_429"] == 0
    assert builtin["audit"]["sent_tasks"] == DELETIONS
    assert builtin["would_429_at_r"] >= 0
