"""deploy/kubernetes: kustomizations, the schemas of two Kubernetes versions, the image tag, the
ConfigMap/Secret split, pod security, the worker, beat, Flower and its network policies, and Redis."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.files import (
    CONFIGMAP,
    IMAGE,
    K8S_BASE,
    K8S_REDIS,
    K8S_VERSIONS,
    SECRET,
    SECRET_SETTINGS,
    SETTING_NAMES,
    TOOLS_HINT,
    all_k8s_docs,
    by_name,
    containers_of,
    dockerfile_uid,
    is_our_image,
    kustomization,
    pod_specs,
    project_version,
    render,
    secret_example,
    settings_from,
    worst_shutdown_s,
)
from worker.settings import ENV_PREFIX, SettingsError


@pytest.mark.parametrize("directory", [K8S_BASE, K8S_REDIS], ids=["base", "redis"])
def test_kustomization_lists_every_manifest(directory: Path) -> None:
    spec = kustomization(directory)
    listed = set(spec.get("resources", []))
    for resource in listed:
        assert (directory / resource).exists(), f"{directory.name}/{resource} is listed but missing"
    generated = {entry.rpartition("=")[2] for gen in spec.get("configMapGenerator", []) for entry in gen["files"]}
    for path in directory.iterdir():
        if path.name in ("kustomization.yaml", "secret.example.yaml") or path.name in generated:
            continue
        assert path.name in listed, f"{path} is not in {directory.name}/kustomization.yaml"
    assert "secret.example.yaml" not in listed, "the base never ships a Secret"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_schemas(version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: {TOOLS_HINT}")
    for doc in [*all_k8s_docs(), secret_example()]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: {exc.message}")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed; the loader in files.py renders")
@pytest.mark.parametrize("directory", [K8S_BASE, K8S_REDIS], ids=["base", "redis"])
def test_kubectl_kustomize_renders_what_the_loader_renders(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def summary(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[tuple[str, str, str]]:
        names = set()
        for doc in docs:
            name = doc["metadata"]["name"]
            name = re.sub(r"-[a-z0-9]{10}$", "", name) if doc["kind"] == "ConfigMap" else name
            names.add((doc["kind"], name, doc["metadata"].get("namespace", "")))
        return sorted(names)

    assert summary(rendered) == summary(render(directory))
    images = sorted(c["image"] for doc in rendered for c in containers_of(doc))
    assert images == sorted(c["image"] for doc in render(directory) for c in containers_of(doc))


def test_kubernetes_image_tag_matches_the_project() -> None:
    [image] = kustomization(K8S_BASE)["images"]
    assert image["name"] == IMAGE and image["newTag"] == project_version()
    assert "newName" not in image, "no registry host in the base; set it with kustomize edit set image"


def test_kubernetes_settings_split_between_configmap_and_secret() -> None:
    config = by_name("ConfigMap", CONFIGMAP)["data"]
    secret = secret_example()
    assert secret["metadata"]["name"] == SECRET
    secret_data = secret["stringData"]
    assert set(config) <= SETTING_NAMES, f"unknown settings in the ConfigMap: {set(config) - SETTING_NAMES}"
    assert not set(config) & SECRET_SETTINGS, "credentials and Redis URLs belong in the Secret"
    assert set(secret_data) <= SETTING_NAMES | {"REDIS_PASSWORD"}
    assert set(secret_data) - {"REDIS_PASSWORD"} <= SECRET_SETTINGS, "non-secret values belong in the ConfigMap"
    settings = settings_from({**config, **secret_data})
    assert settings.auth_mode == "token" and settings.schedule_enabled is False
    assert settings.flower_basic_auth is not None
    url = urlsplit(secret_data[ENV_PREFIX + "REDIS_URL"])
    assert url.password == secret_data["REDIS_PASSWORD"]
    assert url.hostname == by_name("Service", "sfs-cleanup-redis")["metadata"]["name"]
    for name in SECRET_SETTINGS | {"REDIS_PASSWORD"}:
        if name in secret_data:
            assert re.search("change-?me", secret_data[name], re.I), f"{name} must be an obvious placeholder"


def test_pods_run_non_root_read_only_and_least_privileged() -> None:
    uid = dockerfile_uid()
    for kind, name, pod in pod_specs():
        where = f"{kind}/{name}"
        assert pod.get("automountServiceAccountToken") is False, where
        pod_security = pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, where
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
            if is_our_image(container["image"]):
                assert pod_security["runAsUser"] == uid, f"{where}: the image's user is {uid}"
                mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be a writable emptyDir"
                env_from = container["envFrom"]
                assert {"configMapRef": {"name": CONFIGMAP}} in env_from, where
                assert {"secretRef": {"name": SECRET}} in env_from, where


def service_link_variables(address: str = "10.96.0.10") -> dict[str, str]:
    """What Kubernetes puts in the environment of a pod for each Service of its namespace (the
    kubelet's service links; headless Services have none)."""
    env: dict[str, str] = {}
    for doc in all_k8s_docs():
        if doc["kind"] != "Service" or doc["spec"].get("clusterIP") == "None":
            continue
        name = doc["metadata"]["name"].upper().replace("-", "_")
        ports = doc["spec"]["ports"]
        env |= {f"{name}_SERVICE_HOST": address, f"{name}_SERVICE_PORT": str(ports[0]["port"])}
        env[f"{name}_PORT"] = f"tcp://{address}:{ports[0]['port']}"
        for port in ports:
            number, link = port["port"], f"{name}_PORT_{port['port']}_TCP"
            env |= {f"{name}_SERVICE_PORT_{port['name'].upper()}": str(number), link: f"tcp://{address}:{number}"}
            env |= {f"{link}_PROTO": "tcp", f"{link}_PORT": str(number), f"{link}_ADDR": address}
    return env


def test_our_pods_get_no_service_links() -> None:
    # Our Services are named sfs-cleanup-*: their links land under the settings' prefix, where the
    # settings refuse unknown names, and one (SFS_CLEANUP_METRICS_PORT, a URL) is a setting.
    links = service_link_variables()
    assert ENV_PREFIX + "METRICS_PORT" in links and ENV_PREFIX + "REDIS_SERVICE_HOST" in links
    config = by_name("ConfigMap", CONFIGMAP)["data"]
    with pytest.raises(SettingsError) as refused:
        settings_from({**config, **secret_example()["stringData"], **links})
    assert any("enableServiceLinks: false" in line for line in refused.value.lines), refused.value.lines
    for kind, name, pod in pod_specs():
        if any(is_our_image(container["image"]) for container in pod["containers"]):
            assert pod.get("enableServiceLinks") is False, f"{kind}/{name}: set enableServiceLinks: false"


def test_namespace_enforces_restricted_pod_security() -> None:
    labels = by_name("Namespace", "sfs-cleanup")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_worker_deployment_stops_cleanly_and_probes() -> None:
    worker = by_name("Deployment", "sfs-cleanup-worker")
    pod = worker["spec"]["template"]["spec"]
    config = by_name("ConfigMap", CONFIGMAP)["data"]
    assert pod["terminationGracePeriodSeconds"] > worst_shutdown_s(config)
    [container] = pod["containers"]
    argv = [*container["command"], *container["args"]]
    assert argv[:5] == ["celery", "--quiet", "-A", "worker", "worker"] and "-E" in argv
    assert "--concurrency" in argv, "Celery's default concurrency is the node's CPU count"
    assert container["readinessProbe"]["exec"]["command"] == ["sfs-cleanup", "check", "--quiet"]
    assert "inspect ping" in " ".join(container["livenessProbe"]["exec"]["command"])


def test_beat_deployment_runs_two_redbeat_replicas() -> None:
    beat = by_name("Deployment", "sfs-cleanup-beat")
    assert beat["spec"]["replicas"] == 2
    [container] = beat["spec"]["template"]["spec"]["containers"]
    assert container["args"][-2:] == ["--scheduler", "redbeat.RedBeatScheduler"]


def test_flower_is_clusterip_and_fenced_by_a_network_policy() -> None:
    flower = by_name("Deployment", "sfs-cleanup-flower")
    flower_labels = flower["spec"]["template"]["metadata"]["labels"]
    service = by_name("Service", "sfs-cleanup-flower")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= flower_labels.items()
    policies = [doc for doc in all_k8s_docs() if doc["kind"] == "NetworkPolicy"]
    deny_all = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny_all and deny_all[0]["spec"]["policyTypes"] == ["Ingress"], "a default-deny ingress policy"
    flower_policies = [
        p
        for p in policies
        if "Ingress" in p["spec"]["policyTypes"]  # egress fences (they select Flower too) have no ingress rules
        and p["spec"]["podSelector"].get("matchLabels", {}).items() <= flower_labels.items()
        and p["spec"]["podSelector"] != {}
    ]
    assert flower_policies
    for policy in flower_policies:
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from"), "an ingress rule without 'from' lets everyone in"
            assert [port["port"] for port in rule["ports"]] == [5555]
    [container] = flower["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert container["ports"][0]["containerPort"] == 5555


def test_optional_redis_statefulset() -> None:
    redis_set = by_name("StatefulSet", "sfs-cleanup-redis")
    pod = redis_set["spec"]["template"]["spec"]
    [container] = pod["containers"]
    script = container["command"][2]
    assert script.startswith("exec redis-server /etc/redis/redis.conf")
    assert '--requirepass "$REDIS_PASSWORD"' in script
    [password] = container["env"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "REDIS_PASSWORD"}
    assert "REDIS_PASSWORD" in secret_example()["stringData"]
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    config_map = by_name("ConfigMap", config_volume["configMap"]["name"])
    assert "redis.conf" in config_map["data"]
    assert redis_set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    policy = by_name("NetworkPolicy", "sfs-cleanup-redis")
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6379}]
