"""The README's demo, end to end (made short by a flag): its report agrees with the fake's own
counts, it exits 0, and it leaves no process behind, also when interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries ``marker`` (the demo's children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                stat = (entry / "stat").read_text()
                if stat.split(") ", 1)[1][0] != "Z":  # zombies are already dead
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def demo_env(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFS_CLEANUP_")}
    env["SFS_DEMO_TEST_MARK"] = marker
    return env


def test_demo_report_agrees_with_the_server_and_leaves_nothing_running() -> None:
    marker = uuid.uuid4().hex
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "demo", "--short", "--json"],
        env=demo_env(marker),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    report, fake = summary["report"], summary["fake"]
    assert summary["agree"] is True
    assert report["status"] == "finished"
    assert sum(report["outcomes"].values()) == report["selected"] > 0
    assert report["outcomes"]["deleted"] == fake["deletes_accepted"]
    assert report["outcomes"]["failed"] == 0
    assert fake["duplicate_deletes"] == 0
    assert summary["dry_run"]["outcomes"]["would_delete"] == report["selected"]
    assert "Checked against the fake API's own counts" in result.stderr
    time.sleep(0.5)
    assert processes_with(marker) == []


def test_demo_interrupted_stops_everything_it_started() -> None:
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        # --keep: on a busy machine a short demo can end before the signal lands; kept, it cannot.
        [sys.executable, "-m", "scheduler.cli", "demo", "--short", "--keep"],
        env=demo_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    # Wait until the workers are up (redis, fake, and at least two workers carry the marker).
    while time.monotonic() < deadline and len(processes_with(marker)) < 5:
        time.sleep(0.2)
    assert len(processes_with(marker)) >= 5
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    time.sleep(0.5)
    assert processes_with(marker) == []
