"""README.md and docs/ (every path they name exists, the deployment topics are covered) and deploy/check.sh."""

from __future__ import annotations

import os
import re
import subprocess

from tests.deploy.files import DEPLOY, ROOT

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
