"""The Grafana dashboard (deploy/grafana/sfs-cleanup.json) and its provisioning: every query
parses (promtool, as recording rules) and reads only metrics that `sfs-cleanup metrics` serves."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.promql import (
    GRAFANA_DIR,
    ROOT,
    metric_names,
    promtool,
    served_metric_names,
    substitute_grafana_variables,
)

DASHBOARD = GRAFANA_DIR / "sfs-cleanup.json"
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels inside collapsed rows
    return found


def queries() -> list[tuple[str, str]]:
    """(where, PromQL with Grafana's variables filled in) for every target of every panel."""
    found = []
    for panel in panels():
        for target in panel.get("targets", []):
            found.append((f"{panel['title']} / {target['refId']}", substitute_grafana_variables(target["expr"])))
    return found


def test_dashboard_shape() -> None:
    dash = dashboard()
    assert dash["uid"] == "sfs-cleanup" and dash["title"]
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    [variable] = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] in ("row", "text"):
            continue
        assert panel.get("targets"), f"{panel['title']}: no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_query_parses(tmp_path: Path) -> None:
    # promtool 2.x has no standalone PromQL parser command; a recording rule per query makes
    # `promtool check rules` parse each one with Prometheus' own parser.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr, "labels": {"where": where}}
        for n, (where, expr) in enumerate(queries())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_queries_read_only_metrics_the_exporter_serves(redis_url: str) -> None:
    served = served_metric_names(redis_url)
    for where, expr in queries():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - served
        assert not unknown, f"{where} reads {unknown}, which `sfs-cleanup metrics` does not serve"


def test_dashboard_covers_what_the_on_call_needs() -> None:
    read = set().union(*(metric_names(expr) for _, expr in queries()))
    for topic, metric in {
        "runs": "sfs_cleanup_run_info",
        "outcomes": "sfs_cleanup_run_outcomes_total",
        "request rate": "sfs_cleanup_run_attempts_total",
        "the limit": "sfs_cleanup_ratelimit_configured_rps",
        "429s": "sfs_cleanup_ratelimit_throttled_total",
        "queue depth": "sfs_cleanup_queue_messages",
        "circuit": "sfs_cleanup_ratelimit_circuit_state",
        "nightly run": "sfs_cleanup_last_run_finished_timestamp_seconds",
        "API latency": "sfs_cleanup_api_request_duration_seconds_bucket",
        "API answers by status": "sfs_cleanup_api_responses_total",
        "live workers": "sfs_cleanup_workers_online",
        "Redis memory": "sfs_cleanup_redis_used_memory_bytes",
    }.items():
        assert metric in read, f"no panel shows {topic} ({metric})"


def test_grafana_provisioning_matches_compose() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    grafana = compose["services"]["grafana"]
    assert grafana["profiles"] == ["monitoring"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "sfs-cleanup.yaml").read_text())
    [provider] = providers["providers"]
    folder = provider["options"]["path"]
    dashboards = {target: source for target, source in mounts.items() if target.startswith(folder + "/")}
    assert dashboards == {f"{folder}/sfs-cleanup.json": "./grafana/sfs-cleanup.json"}
    sources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus"
    host = re.fullmatch(r"http://([\w-]+):9090", source["url"])
    assert host and host.group(1) in compose["services"], source["url"]
    for path in (GRAFANA_DIR / "provisioning").rglob("*"):
        if path.is_file():
            assert path.suffix == ".yaml", f"{path}: Grafana reads .yaml/.yml provisioning files"
