"""The alert rules: deploy/prometheus/alerts.yaml, its promtool unit tests, and the generated
PrometheusRule. promtool missing: skipped locally, a failure when CI is set (see .ci/run)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.promql import PROMETHEUS_DIR, ROOT, metric_names, promtool, served_metric_names

ALERTS = PROMETHEUS_DIR / "alerts.yaml"
PROMETHEUS_RULE = PROMETHEUS_DIR / "prometheusrule.yaml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yaml"))
OPERATIONS = ROOT / "docs" / "operations.md"


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, check=False, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    result = run([promtool(), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests/"
    result = run([promtool(), "test", "rules", *map(str, RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_promtool_check_compose_prometheus_config() -> None:
    result = run([promtool(), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        spec = yaml.safe_load(path.read_text())
        assert spec["rule_files"] == ["../alerts.yaml"], f"{path.name} must test deploy/prometheus/alerts.yaml"
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert names - firing == set(), "rules without a firing case"
    assert names - quiet == set(), "rules without a non-firing case"
    assert (firing | quiet) - names == set(), "tests name rules that do not exist"


def test_rules_read_only_metrics_the_exporter_serves(redis_url: str) -> None:
    served = served_metric_names(redis_url)
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        unknown = names - served
        assert not unknown, f"{rule['alert']} reads {unknown}, which `sfs-cleanup metrics` does not serve"


def test_rules_are_labelled_and_documented() -> None:
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)
    }
    for rule in rules():
        name = rule["alert"]
        assert re.fullmatch(r"SfsCleanup[A-Z]\w+", name), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "docs/operations.md", name
        assert anchor in anchors, f"{name}: docs/operations.md has no heading #{anchor}"


def _sync_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_prometheusrule", PROMETHEUS_DIR / "sync_prometheusrule.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_is_generated_from_alerts_yaml() -> None:
    assert PROMETHEUS_RULE.read_text() == _sync_module().render(), (
        "deploy/prometheus/prometheusrule.yaml is out of date: python3 deploy/prometheus/sync_prometheusrule.py"
    )
    [doc] = [d for d in yaml.safe_load_all(PROMETHEUS_RULE.read_text()) if d]
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["namespace"] == "sfs-cleanup"
    assert doc["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_sync_script_check_mode_passes() -> None:
    import sys

    result = run([sys.executable, str(PROMETHEUS_DIR / "sync_prometheusrule.py"), "--check"])
    assert result.returncode == 0, result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    # The checks above are only worth something if promtool says no: a syntax error...
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n")
    assert run([promtool(), "check", "rules", str(bad)]).returncode != 0


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    # ...and a unit test whose expectation is wrong.
    (tmp_path / "rules.yaml").write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: vector(1)\n"
    )
    case = tmp_path / "case.yaml"
    case.write_text(
        "rule_files: [rules.yaml]\ntests:\n  - interval: 1m\n    input_series: []\n"
        "    alert_rule_test:\n      - {eval_time: 1m, alertname: X, exp_alerts: []}\n"
    )
    assert run([promtool(), "test", "rules", str(case)], cwd=tmp_path).returncode != 0
