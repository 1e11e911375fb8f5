"""Helpers for the monitoring tests: promtool, the metric families the exporter serves, and the
metric names a PromQL expression reads."""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

PROMTOOL_HINT = (
    "promtool not found: install Prometheus' tools (Debian/Ubuntu: apt-get install prometheus; "
    "or the promtool binary of a Prometheus release) to check the alert rules and dashboard queries"
)


def promtool() -> str:
    """Path of promtool. Missing: the test fails under CI (env CI set), else it is skipped."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(PROMTOOL_HINT + " (CI is set, so this is a failure)")
        pytest.skip(PROMTOOL_HINT)
    return found


def served_metric_names(redis_url: str) -> frozenset[str]:
    """Every series name `sfs-cleanup metrics` serves: one scrape of the real collector.

    The settings name an API endpoint and a project so the fleet limiter's families are included;
    runs' families are served (HELP/TYPE) even with no run in Redis. Counters are served with the
    _total suffix, histograms as their _bucket, _sum and _count series.
    """
    from prometheus_client import generate_latest

    from scheduler.metrics import registry_for
    from worker.settings import load_settings

    env = {
        "SFS_CLEANUP_REDIS_URL": redis_url,
        "SFS_CLEANUP_API_ENDPOINT": "https://sfs-turbo.ap-southeast-1.myhuaweicloud.com",
        "SFS_CLEANUP_PROJECT_ID": "0123456789abcdef0123456789abcdef",
        "SFS_CLEANUP_AUTH_TOKEN": "change-me-token",
    }
    with mock.patch.dict(os.environ, env):
        settings = load_settings(_env_file=None)
    text = generate_latest(registry_for(settings)).decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "histogram":
            names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    assert names, "the exporter served no metric family"
    return frozenset(names)


# --- metric names in PromQL ------------------------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_FUNCTIONS_AND_AGGREGATIONS = {
    # aggregation operators and functions: identifiers followed by "(" are skipped anyway;
    # these also appear before a "by (...)" clause, e.g. "sum by (x) (...)".
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
}
_GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${__rate_interval}": "5m",
    "${__interval}": "1m",
    "${__range}": "1h",
}


def substitute_grafana_variables(expr: str) -> str:
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (names as selectors, not labels or functions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery brackets
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word in _KEYWORDS or word in _FUNCTIONS_AND_AGGREGATIONS:
            continue
        if re.fullmatch(r"\d+[smhdwy]|Inf|NaN|inf|nan", word):
            continue
        names.add(word)
    return names


@functools.cache
def _self_check() -> None:
    assert metric_names('sum by (outcome) (rate(a_total{x="y"}[5m])) / on (run_id) b > 0.1') == {"a_total", "b"}
    assert metric_names('time() - max(c{trigger="schedule"}) > 26 * 3600') == {"c"}
    assert metric_names("absent(d) and on () (max(e) == 1)") == {"d", "e"}
    assert metric_names("max(increase(f[1h])) or vector(0)") == {"f"}


_self_check()
