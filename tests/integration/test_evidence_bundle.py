"""The evidence bundle of a real run (Redis, a worker, the fake API with failures and retries):
one row per selected task with every request ID the fake gave, a verify that passes offline, and
each kind of tampering caught by ``audit verify`` with its own message and exit code 8."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.fakeapi.server import FakeApi
from scheduler.evidence import members as m
from tests.support.cluster import Cluster, fake_api
from tests.support.secrets import write_manifest

pytestmark = pytest.mark.integration

# Tasks whose every DELETE is refused (failed), others answering 500 twice first (retried).
fake = fake_api(
    shares=2,
    tasks_per_share=20,
    seed=31,
    deleting_seconds=0,
    permanent_error_ratio=0.15,
    fail_first_ratio=0.3,
    fail_first_k=2,
    record_request_ids=True,
)
NO_REDIS = {"SFS_CLEANUP_REDIS_URL": "redis://127.0.0.1:1/0"}  # verify must not need it
BAD_LINES = ['{"project_id": "x", "share_id": "s"}\n', "not json at all\n"]


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path)
    yield c
    c.stop()


@pytest.fixture
def finished_run(cluster: Cluster, fake: FakeApi, tmp_path: Path) -> dict[str, Any]:
    """A finished run of a manifest with two refused lines, some tasks failed, some retried."""
    manifest = tmp_path / "tasks.jsonl"
    planned = write_manifest(fake, manifest)
    with manifest.open("a") as out:
        out.writelines(BAD_LINES)
    cluster.start_worker("w1", concurrency=2)
    code, report = cluster.purge_json("--manifest", str(manifest), "--yes", "--wait")
    assert code == 3, report  # finished with failed tasks
    assert report["selected"] == planned + len(BAD_LINES) and report["outcomes"]["failed"] > 0
    assert report["retries"] > 0
    return report


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def write_members(path: Path, contents: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in contents.items():
            z.writestr(name, data)


def rows(contents: dict[str, bytes], name: str = m.TASKS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in contents[name].decode().splitlines()]


def bundle(cluster: Cluster, run_id: str, path: Path, *args: str) -> str:
    made = cluster.cli("audit", "bundle", run_id, "-o", str(path), *args)
    assert made.returncode == 0, made.stderr
    digest, name = made.stdout.split()
    assert name == str(path) and len(digest) == 64
    return digest


def verify(cluster: Cluster, path: Path, *args: str) -> Any:
    return cluster.cli("audit", "verify", "--bundle", str(path), *args, **NO_REDIS)


def test_the_bundle_holds_every_task_and_request_id_and_verifies(
    cluster: Cluster, fake: FakeApi, finished_run: dict[str, Any], tmp_path: Path
) -> None:
    run_id, path = finished_run["run_id"], tmp_path / "evidence.zip"
    digest = bundle(cluster, run_id, path)
    contents = read_members(path)
    assert set(contents) == {*m.MEMBERS, m.MANIFEST, m.MANIFEST_DIGEST}
    assert hashlib.sha256(contents[m.MANIFEST]).hexdigest() == digest

    report = json.loads(contents[m.REPORT])
    shown = json.loads(cluster.cli("runs", "show", run_id, "--json").stdout)
    assert {k: v for k, v in report.items() if k != "elapsed_s"} == {k: v for k, v in shown.items() if k != "elapsed_s"}

    tasks = rows(contents)
    assert len(tasks) == len({r["task_id"] for r in tasks}) == report["selected"] - len(BAD_LINES)
    by_outcome = Counter(r["outcome"] for r in tasks)
    assert by_outcome == {k: v for k, v in report["outcomes"].items() if v and k != "rejected"}
    assert {r["task_id"] for r in tasks if r["outcome"] == "deleted"} == {d["task_id"] for d in fake.deleted()}

    # Every DELETE the fake answered is in the bundle with its request ID, and nothing else is.
    answered = [a for a in fake.answered() if a["method"] == "DELETE"]
    attempts = [a for r in tasks for a in r["attempt_log"] if a["op"] == "delete"]
    assert sorted(a["request_id"] for a in attempts) == sorted(a["rid"] for a in answered)
    assert all(a["request_id"] and a["status"] for a in attempts)
    assert any(r["attempts"] > 1 and r["outcome"] == "deleted" for r in tasks), "a retried task"
    for r in tasks:
        assert r["request_ids"] == [a["request_id"] for a in r["attempt_log"]]
        assert r["attempts"] == len(r["attempt_log"])

    # The export's rows, with the attempts left out, are the bundle's rows: the same content.
    exported = cluster.cli("audit", "export", run_id, "--format", "jsonl", check=True).stdout.splitlines()
    mine = [{k: v for k, v in r.items() if k not in ("attempt_log", "batch")} for r in tasks]
    mine += [{k: v for k, v in r.items() if k != "source"} for r in rows(contents, m.REFUSED)]
    assert sorted(json.dumps(r, sort_keys=True) for r in mine) == sorted(
        json.dumps(json.loads(x), sort_keys=True) for x in exported
    )
    refused = rows(contents, m.REFUSED)
    assert [r["input_line"] for r in refused] == [
        report["selected"] - len(BAD_LINES) + 1,
        report["selected"] - len(BAD_LINES) + 2,
    ]

    info = json.loads(contents[m.BUNDLE])
    assert info["complete"] is True and info["chain_head"] == report["chain"]["head"]
    # Each final and each attempt, and each DELETE's write-ahead intent besides its answer.
    deletes = sum(1 for r in tasks for a in r["attempt_log"] if a["op"] == "delete")
    assert info["chain_n"] == report["chain"]["entries"] == report["attempts"] + len(tasks) + deletes
    assert info["created_by"] and info["tool_version"] and info["run_status"] == "finished"
    rate = json.loads(contents[m.RATE])
    assert rate["requests"] == len(answered) and rate["throttled_429"] == report["throttled"]
    settings = json.loads(contents[m.SETTINGS])
    canonical = json.dumps(settings["view"], sort_keys=True, separators=(",", ":")).encode()
    assert settings["source"] == "plan" and settings["sha256"] == hashlib.sha256(canonical).hexdigest()
    assert settings["view"]["SFS_CLEANUP_PROJECT_ID"] == fake.project_id
    assert json.loads(contents[m.POLICY])["policy"] == report["policy"]

    checked = verify(cluster, path, "--digest", digest)
    assert checked.returncode == 0, checked.stderr
    assert f"sound: {path}" in checked.stdout and "the bundle's digest equals the one expected" in checked.stdout
    assert "outcome counts equal a recount of the rows" in checked.stdout


def _edit_row(contents: dict[str, bytes]) -> None:
    data = bytearray(contents[m.TASKS])
    at = data.index(b'"outcome":"') + len(b'"outcome":"')
    data[at] = ord("X")  # one byte of one row
    contents[m.TASKS] = bytes(data)


def _add_member(contents: dict[str, bytes]) -> None:
    contents["notes.txt"] = b"added later\n"


def _remove_member(contents: dict[str, bytes]) -> None:
    del contents[m.REFUSED]


def _edit_manifest(contents: dict[str, bytes]) -> None:
    contents[m.MANIFEST] = contents[m.MANIFEST].replace(b"  ", b"  1", 1)  # one size, ten times larger


def _forge_counts(contents: dict[str, bytes]) -> None:
    """Move a failed task to deleted in the report, and recompute every hash so that only the
    consistency check can tell."""
    report = json.loads(contents[m.REPORT])
    report["outcomes"]["failed"] -= 1
    report["outcomes"]["deleted"] += 1
    contents[m.REPORT] = json.dumps(report, indent=2, sort_keys=True).encode() + b"\n"
    entries = [
        m.Entry(e.name, len(contents[e.name]), hashlib.sha256(contents[e.name]).hexdigest())
        for e in m.parse_manifest(contents[m.MANIFEST])
    ]
    contents[m.MANIFEST] = m.render_manifest(entries)
    contents[m.MANIFEST_DIGEST] = f"{m.digest(contents[m.MANIFEST])}  MANIFEST\n".encode()


TAMPERING: list[tuple[str, Callable[[dict[str, bytes]], None], str]] = [
    ("a row", _edit_row, "member tasks.jsonl was changed: its SHA-256 differs from MANIFEST's"),
    ("a member removed", _remove_member, "member refused.jsonl is listed in MANIFEST but missing from the archive"),
    ("a member added", _add_member, "member notes.txt is in the archive but not listed in MANIFEST"),
    ("the manifest", _edit_manifest, "MANIFEST was changed: its SHA-256 is"),
    ("the report's counts", _forge_counts, "the report counts "),
]


def test_each_kind_of_tampering_is_caught_with_its_message_and_exit_8(
    cluster: Cluster, finished_run: dict[str, Any], tmp_path: Path
) -> None:
    original = tmp_path / "evidence.zip"
    digest = bundle(cluster, finished_run["run_id"], original)
    deleted = finished_run["outcomes"]["deleted"]
    for what, change, message in TAMPERING:
        contents = read_members(original)
        change(contents)
        forged = tmp_path / f"forged-{what.replace(' ', '-')}.zip"
        write_members(forged, contents)
        result = verify(cluster, forged)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 8, (what, result.stdout, result.stderr)
        assert len(errors) == 1 and message in errors[0], (what, errors)
        as_json = verify(cluster, forged, "--json")
        found = json.loads(as_json.stdout)
        assert as_json.returncode == 8 and found["sound"] is False and message in found["problem"], found
        if change is _forge_counts:
            assert f"the report counts {deleted + 1} deleted but the rows hold {deleted}" in errors[0]
            # Its hashes all agree; the digest kept in the ticket does not.
            pinned = verify(cluster, forged, "--digest", digest)
            assert pinned.returncode == 8 and f"not the expected {digest}" in pinned.stderr

    sound = verify(cluster, original, "--json", "--digest", digest)
    assert (
        sound.returncode == 0
        and json.loads(sound.stdout)["sound"] is True
        and json.loads(sound.stdout)["digest"] == digest
    )

    # A byte flipped in the archive file itself (compressed data): unreadable or changed, never sound.
    raw = bytearray(original.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    flipped = tmp_path / "flipped.zip"
    flipped.write_bytes(bytes(raw))
    result = verify(cluster, flipped)
    assert result.returncode == 8 and result.stderr.startswith("error:"), result.stderr


def test_an_unknown_or_unfinished_run_is_refused_and_an_existing_file_kept(cluster: Cluster, tmp_path: Path) -> None:
    unknown = cluster.cli("audit", "bundle", "no-such-run", "-o", str(tmp_path / "x.zip"))
    assert unknown.returncode == 2 and unknown.stderr.strip() == "error: no run 'no-such-run'"

    # No worker runs: the run is started and stays running.
    code, started = cluster.purge_json("--older-than", "0s")
    assert code == 0 and started["status"] == "running", started
    run_id, path = started["run_id"], tmp_path / "running.zip"
    refused = cluster.cli("audit", "bundle", run_id, "-o", str(path))
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "is running, not over" in errors[0]
    assert "--allow-incomplete" in errors[0] and not path.exists()

    bundle(cluster, run_id, path, "--allow-incomplete")
    info = json.loads(read_members(path)[m.BUNDLE])
    assert info["complete"] is False and "--allow-incomplete while the run was running" in info["incomplete_note"]
    checked = verify(cluster, path)
    assert checked.returncode == 0, checked.stderr
    assert "note: made with --allow-incomplete" in checked.stdout

    before = path.read_bytes()
    again = cluster.cli("audit", "bundle", run_id, "-o", str(path), "--allow-incomplete")
    assert again.returncode == 2 and f"{path} exists; add --force" in again.stderr
    assert path.read_bytes() == before
    forced = bundle(cluster, run_id, path, "--allow-incomplete", "--force")
    assert path.read_bytes() != before and verify(cluster, path, "--digest", forced).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".part")) == []
