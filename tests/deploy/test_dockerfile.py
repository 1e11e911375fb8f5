"""The Dockerfile (hadolint, stages, environment, user, command, labels, copied files) and .dockerignore."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.deploy.files import (
    ROOT,
    copied_sources,
    dockerfile,
    dockerfile_args,
    dockerfile_cmd,
    dockerfile_healthcheck,
    dockerfile_uid,
    env_pairs,
    final_stage,
    project_version,
    tool,
)


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
    assert not ignored_by_docker("worker/settings/model.py")
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
