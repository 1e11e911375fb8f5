"""deploy/docker-compose.yml (the Compose spec, services, interpolation, Redis, worker, beat,
Flower and its start-up script, the demo profile) and deploy/redis.conf."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.files import (
    COMPOSE_FILE,
    DEPLOY,
    K8S_REDIS,
    ROOT,
    app_services,
    compose,
    pod_specs,
    redis_directives,
    tool,
    worst_shutdown_s,
)


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
