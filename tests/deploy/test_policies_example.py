"""The example named-policies file is valid, and what Compose and Kubernetes mount is that file."""

from __future__ import annotations

from pathlib import Path

import yaml

from scheduler.policies import load_policy_set

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "policies.example.yaml"
MOUNT = "/etc/sfs-cleanup"


def test_the_kubernetes_configmap_holds_exactly_the_example_file() -> None:
    doc = yaml.safe_load((DEPLOY / "kubernetes" / "base" / "policies-configmap.yaml").read_text())
    assert doc["metadata"]["name"] == "sfs-cleanup-policies"
    assert doc["data"]["policies.yaml"] == EXAMPLE.read_text()
    assert load_policy_set(EXAMPLE).scheduled()


def test_scheduler_and_beat_mount_the_policies_in_compose_and_kubernetes() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name in ("scheduler", "beat"):
        assert f"./policies.example.yaml:{MOUNT}/policies.yaml:ro" in services[name]["volumes"]
    for name in ("scheduler", "beat"):
        doc = yaml.safe_load((DEPLOY / "kubernetes" / "base" / f"{name}-deployment.yaml").read_text())
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["policies"]["configMap"]["name"] == "sfs-cleanup-policies"
        [container] = pod["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["policies"] == {"name": "policies", "mountPath": MOUNT, "readOnly": True}
