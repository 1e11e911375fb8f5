"""Operations hardening in deploy/: the exporter in Compose and Kubernetes, the monitoring
profile, PodDisruptionBudgets, network fences, Redis' memory limit, and the runbook's commands."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml

from tests.deploy.files import all_k8s_docs, by_name, compose, redis_directives
from tests.deploy.promql import ROOT

DEPLOY = ROOT / "deploy"
OPERATIONS = ROOT / "docs" / "operations.md"
METRICS_PORT = 9808
COMPONENTS_USING_REDIS = {"worker", "scheduler", "beat", "flower", "metrics"}


def deployments() -> list[dict[str, Any]]:
    return [doc for doc in all_k8s_docs() if doc["kind"] == "Deployment"]


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "the test only knows the In operator"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "mb": 1, "gb": 1024, "m": 1, "g": 1024, "k": 1 / 1024}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity.strip())
    assert match and match.group(2) in units, quantity
    return float(match.group(1)) * units[match.group(2)]


# --- Compose ---------------------------------------------------------------------------------


def test_compose_runs_the_exporter() -> None:
    metrics = compose()["services"]["metrics"]
    assert metrics["command"] == ["sfs-cleanup", "metrics", "--address", "0.0.0.0", "--port", str(METRICS_PORT)]
    assert metrics["ports"] == [f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}"]
    assert f"127.0.0.1:{METRICS_PORT}/metrics" in " ".join(metrics["healthcheck"]["test"])
    assert "profiles" not in metrics, "the exporter runs with the fleet, not only with the monitoring profile"


def test_compose_monitoring_profile() -> None:
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        svc = services[name]
        assert svc["profiles"] == ["monitoring"], name
        image, _, tag = svc["image"].rpartition(":")
        assert image and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin the image to a release"
        assert all(port.startswith("127.0.0.1:") for port in svc["ports"]), f"{name}: local only"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
    prometheus = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yaml"]
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert f"metrics:{METRICS_PORT}" in targets


def test_compose_redis_memory_limit_matches_maxmemory() -> None:
    conf = redis_directives(DEPLOY / "redis.conf")
    limit = mebibytes(compose()["services"]["redis"]["mem_limit"])
    assert 0.5 * limit <= mebibytes(conf["maxmemory"]) <= 0.8 * limit


# --- Kubernetes ------------------------------------------------------------------------------


def test_kubernetes_exporter_deployment_and_service() -> None:
    deployment = by_name("Deployment", "sfs-cleanup-metrics")
    assert deployment["spec"]["replicas"] == 1, "one exporter shows the whole fleet; more duplicate every series"
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    [container] = template["spec"]["containers"]
    assert [*container["command"], *container["args"]] == [
        "sfs-cleanup",
        "metrics",
        "--address",
        "0.0.0.0",
        "--port",
        str(METRICS_PORT),
    ]
    assert container["ports"] == [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    service = by_name("Service", "sfs-cleanup-metrics")
    assert service["spec"]["type"] == "ClusterIP"
    assert labels_match({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
    assert service["spec"]["ports"][0]["port"] == METRICS_PORT
    assert not any(key.startswith("prometheus.io/") for key in service["metadata"].get("annotations", {})), (
        "annotate the pod or the Service, not both: some setups would scrape twice"
    )


def test_only_prometheus_of_the_monitoring_namespace_reaches_the_exporter() -> None:
    labels = by_name("Deployment", "sfs-cleanup-metrics")["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in all_k8s_docs()
        if p["kind"] == "NetworkPolicy"
        and "Ingress" in p["spec"]["policyTypes"]
        and p["spec"]["podSelector"]
        and labels_match(p["spec"]["podSelector"], labels)
    ]
    assert [p["metadata"]["name"] for p in policies] == ["sfs-cleanup-metrics"]
    [rule] = policies[0]["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": METRICS_PORT}]
    [peer] = rule["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}


def test_redis_admits_every_component_that_uses_it() -> None:
    policy = by_name("NetworkPolicy", "sfs-cleanup-redis")
    components = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments()}
    assert components == COMPONENTS_USING_REDIS
    for component in components:
        labels = {"app.kubernetes.io/name": "sfs-turbo-cleanup", "app.kubernetes.io/component": component}
        assert any(labels_match(peer["podSelector"], labels) for peer in policy["spec"]["ingress"][0]["from"]), (
            component
        )


def egress_policies_for(labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        p
        for p in all_k8s_docs()
        if p["kind"] == "NetworkPolicy"
        and "Egress" in p["spec"]["policyTypes"]
        and labels_match(p["spec"]["podSelector"], labels)
    ]


@pytest.mark.parametrize("component", sorted(COMPONENTS_USING_REDIS))
def test_egress_is_fenced(component: str) -> None:
    labels = {"app.kubernetes.io/name": "sfs-turbo-cleanup", "app.kubernetes.io/component": component}
    [policy] = egress_policies_for(labels)
    allowed = set()
    for rule in policy["spec"]["egress"]:
        assert rule.get("ports"), f"{policy['metadata']['name']}: an egress rule without ports allows every port"
        for port in rule["ports"]:
            allowed.add((port["protocol"], port["port"]))
        if any(port["port"] == 6379 for port in rule["ports"]):
            [peer] = rule["to"]
            assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    expected = {("TCP", 6379), ("UDP", 53), ("TCP", 53)}
    if component in ("worker", "scheduler"):  # they call the SFS Turbo API (and IAM) over HTTPS
        expected.add(("TCP", 443))
        expected.add(("TCP", 80))  # the metadata service only (platform credentials), checked below
    assert allowed == expected
    for rule in policy["spec"]["egress"]:
        if any(port["port"] == 80 for port in rule["ports"]):
            assert rule["to"] == [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "HTTP: metadata only"


def test_a_pod_disruption_budget_per_deployment() -> None:
    budgets = [doc for doc in all_k8s_docs() if doc["kind"] == "PodDisruptionBudget"]
    for deployment in deployments():
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if labels_match(b["spec"]["selector"], labels)]
        assert len(mine) == 1, f"{name}: {len(mine)} PodDisruptionBudgets"
        spec = mine[0]["spec"]
        replicas = deployment["spec"]["replicas"]
        if replicas > 1:
            assert spec["minAvailable"] == 1 and spec["minAvailable"] < replicas, name
        else:
            assert spec.get("maxUnavailable") == 1, f"{name}: one replica must stay evictable (node drains)"
        assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow", name


def test_redis_maxmemory_fits_the_statefulset_limit() -> None:
    conf = redis_directives(DEPLOY / "kubernetes" / "redis" / "redis.conf")
    assert conf["maxmemory-policy"] == "noeviction"
    [container] = by_name("StatefulSet", "sfs-cleanup-redis")["spec"]["template"]["spec"]["containers"]
    limit = mebibytes(container["resources"]["limits"]["memory"])
    maxmemory = mebibytes(conf["maxmemory"])
    assert 0.5 * limit <= maxmemory <= 0.8 * limit, "keep maxmemory at about 75% of the pod's limit"


# --- The runbook -----------------------------------------------------------------------------


def runbook_code() -> list[str]:
    text = OPERATIONS.read_text()
    # Fenced blocks first: their lines are code, and their backticks must not pair with inline ones.
    fenced = re.findall(r"^ *```[a-z]*\n(.*?)^ *```", text, flags=re.S | re.M)
    text = re.sub(r"^ *```[a-z]*\n.*?^ *```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`]+)`", text)
    blocks = [line for line in text.splitlines() if line.startswith("    ")]
    blocks += [line.strip() for block in fenced for line in block.splitlines() if line.strip()]
    return [" ".join(span.split()) for span in [*spans, *blocks]]


def runbook_commands() -> list[list[str]]:
    found = []
    for code in runbook_code():
        for match in re.finditer(r"(?<![\w/-])sfs-cleanup (?=[a-z])", code):
            if code[: match.start()].endswith("-n "):
                continue  # kubectl's namespace, not the CLI
            command = re.split(r"\s(?:\||>|&&|;|#)\s?", code[match.end() :])[0]
            argv = shlex.split(command.replace("...", ""))
            if argv:
                found.append(argv)
    return found


def test_runbook_commands_exist() -> None:
    from typer.testing import CliRunner

    from scheduler.cli import app

    commands = runbook_commands()
    cited = {tuple(argv[:2]) for argv in commands}
    for needed in (("runs", "replay"), ("runs", "cancel"), ("protect", "add")):
        assert needed in cited, f"the runbook should cite sfs-cleanup {' '.join(needed)}"
    for argv in commands:
        result = CliRunner().invoke(app, [*argv, "--help"], prog_name="sfs-cleanup")
        assert result.exit_code == 0, f"sfs-cleanup {' '.join(argv)}:\n{result.output}"


def test_runbook_names_real_deployments_and_files() -> None:
    text = OPERATIONS.read_text()
    names = {d["metadata"]["name"] for d in deployments()}
    cited = set(re.findall(r"\b(sfs-cleanup-(?:worker|scheduler|beat|flower|metrics|redis)\b[\w-]*)", text))
    unknown = {name for name in cited if name not in names and not name.startswith("sfs-cleanup-redis")}
    assert not unknown, f"docs/operations.md names deployments that do not exist: {unknown}"
    services = set(compose()["services"])
    for service in re.findall(r"docker compose (?:stop|ps|logs) ([\w ]+)", text):
        assert set(service.split()) <= services, service
    paths = set(re.findall(r"(?<![\w./-])((?:deploy|docs)/[\w./-]*[\w/])", text))
    paths = {path for path in paths if not path.startswith("deploy/sfs-cleanup-")}  # kubectl's deploy/NAME
    missing = sorted(path for path in paths if not (ROOT / path).exists() and path != "deploy/.env")
    assert not missing, f"docs/operations.md names files that do not exist: {missing}"
