"""Bad input at scale, and the delete-time recheck: nothing is sent that should not be.

* A manifest of 100,000 lines, 10% of them malformed in many ways (generated with Hypothesis
  strategies, derandomized so every run builds the same file): every bad line is refused with
  its line number, none reaches the API, and the 90,000 good lines are deleted.
* Tasks protected, or whose status changed, after the plan was made are skipped at delete time.

Figures are printed with ``[figure]`` (``pytest -s``).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.seed import Inventory, project_id_for
from sandbox.fakeapi.server import FakeApi
from sandbox.fakeapi.tasks import Task
from scheduler.inventory import KNOWN_FIELDS, MAX_FIELD_CHARS, MAX_LINE_BYTES
from tests.support.cluster import Cluster
from tests.support.faults import FAST, assert_one_outcome_per_task, cli_json, export_rows, figure

pytestmark = pytest.mark.integration

GOOD = 90_000
BAD = 10_000
SHARES = 4
OLD = "2020-01-02T03:04:05"


# --- the manifest -------------------------------------------------------------------------------
def _task_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


_hex = st.text(alphabet="0123456789abcdef", min_size=1, max_size=40)
_TRAVERSAL = ["../", "..\\", "/", "..", "%2e%2e%2f", "..%2F", "./", "/etc/passwd", "\\\\host\\share", "a/../b"]
_INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\xc3"]
_NOT_OBJECTS = ["[]", "[1,2,3]", '"a string"', "42", "null", "true", "-1.5e9"]
_WRONG_TYPES = st.one_of(
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2),
)
# Control characters (C0, DEL, C1) and invisible format characters: never part of an ID.
_CONTROL = st.one_of(
    st.integers(0, 31).filter(lambda c: c != 10).map(chr),
    st.sampled_from(["\x7f", "\x85", "\x9b", "\u200b", "\u202e", "\u2028", "\ufeff"]),
)


@st.composite
def bad_line(draw: st.DrawFn, record: dict[str, Any]) -> tuple[str, bytes]:
    """One malformed manifest line built from ``record`` (a real task the fake holds):
    (kind, bytes without a newline). If the service wrongly accepted it, it would delete the
    real task, which the test then sees."""
    good = _line(record)
    kind = draw(
        st.sampled_from(
            [
                "traversal",
                "utf8",
                "control",
                "control_raw",
                "nul",
                "huge_field",
                "huge_line",
                "unknown_key",
                "missing_key",
                "wrong_type",
                "bad_choice",
                "empty_id",
                "long_id",
                "truncated",
                "trailing",
                "not_object",
                "quotes",
                "duplicate_key",
                "nested",
            ]
        )
    )
    field = draw(st.sampled_from(["share_id", "task_id"]))
    if kind == "traversal":
        where = draw(st.sampled_from(["prefix", "suffix", "whole"]))
        bad = draw(st.sampled_from(_TRAVERSAL))
        value = {"prefix": bad + record[field], "suffix": record[field] + bad, "whole": bad}[where]
        return kind, _line({**record, field: value})
    if kind == "utf8":
        seq = draw(st.sampled_from(_INVALID_UTF8))
        at = draw(st.integers(0, len(good)))
        return kind, good[:at] + seq + good[at:]
    if kind == "control":
        ch = draw(_CONTROL)
        at = draw(st.integers(0, len(record[field])))
        return kind, _line({**record, field: record[field][:at] + ch + record[field][at:]})
    if kind == "control_raw":  # a raw control byte inside a JSON string: invalid JSON
        ch = draw(st.integers(1, 31).filter(lambda c: c not in (10, 13)))
        value = record[field]
        return kind, good.replace(value.encode(), value[:5].encode() + bytes([ch]) + value[5:].encode(), 1)
    if kind == "nul":
        at = draw(st.integers(1, len(good) - 1))
        return kind, good[:at] + b"\x00" + good[at:]
    if kind == "huge_field":
        n = draw(st.integers(MAX_FIELD_CHARS + 1, MAX_FIELD_CHARS * 3))
        name = draw(st.sampled_from(["message", "src_target", "task_id", "status"]))
        return kind, _line({**record, name: "x" * n})
    if kind == "huge_line":
        n = draw(st.integers(MAX_LINE_BYTES + 1, MAX_LINE_BYTES + 5000))
        return kind, _line({**record, "message": "y" * n})
    if kind == "unknown_key":
        key = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in KNOWN_FIELDS))
        return kind, _line({**record, key: draw(st.text(max_size=10))})
    if kind == "missing_key":  # a missing project_id would fall back to the configured one
        return kind, _line({k: v for k, v in record.items() if k != field})
    if kind == "wrong_type":
        name = draw(st.sampled_from(["share_id", "task_id", "project_id", "status", "type"]))
        value = draw(_WRONG_TYPES.filter(lambda v: v is not None or name not in ("status", "type")))
        return kind, _line({**record, name: value})
    if kind == "bad_choice":
        name = draw(st.sampled_from(["status", "type"]))
        allowed = {"SUCCESS", "FAIL", "DOING", "DELETING", "import", "import_metadata", "preload", "export"}
        return kind, _line({**record, name: draw(st.text(min_size=1, max_size=12).filter(lambda v: v not in allowed))})
    if kind == "empty_id":
        return kind, _line({**record, field: ""})
    if kind == "long_id":
        return kind, _line({**record, field: record[field] + "a" * draw(st.integers(33, 200))})
    if kind == "truncated":  # any proper prefix of a JSON object is not one
        return kind, good[: draw(st.integers(1, len(good) - 1))]
    if kind == "trailing":
        return kind, good + draw(st.sampled_from([b",", b"}", b"x", b" 1", b"]", b"{}", b'"'])).rstrip()
    if kind == "not_object":
        return kind, draw(st.sampled_from([*_NOT_OBJECTS, json.dumps(list(record.values()))])).encode()
    if kind == "quotes":
        return kind, good.replace(b'"', b"'")
    if kind == "duplicate_key":
        name = draw(st.sampled_from(["share_id", "task_id", "status"]))
        return kind, good[:-1] + b',"' + name.encode() + b'":' + json.dumps(record[name]).encode() + b"}"
    # nested: deeper than the decoder goes
    depth = draw(st.integers(2000, 5000))
    return kind, b'{"project_id":' + b"[" * depth + b"]" * depth + b"}"


def generate_bad_lines(records: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """One bad line per record, drawn by Hypothesis (derandomized: the same file every run).

    Hypothesis bounds how much one example may draw, so the lines are drawn 100 per example
    over as many examples as it takes.
    """
    out: list[tuple[str, bytes]] = []
    chunk = 100

    @settings(
        max_examples=len(records) // chunk + 20,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw_chunk(data: st.DataObject) -> None:
        # Every example draws a whole chunk, whatever is still needed: records all have the
        # same shape, so the draws do not depend on which records they are for (Hypothesis
        # insists that generation depends on nothing but its own choices).
        start = len(out)
        chunk_records = [records[(start + i) % len(records)] for i in range(chunk)]
        lines = [data.draw(bad_line(r)) for r in chunk_records]
        if start < len(records):
            out.extend(lines[: len(records) - start])  # an example Hypothesis abandons adds nothing

    draw_chunk()
    assert len(out) == len(records), f"drew {len(out)} of {len(records)} bad lines"
    for kind, line in out:
        assert b"\n" not in line and line.strip(b" \t\r"), (kind, line[:80])
    return out


def build_inventory() -> tuple[Inventory, list[dict[str, Any]], list[dict[str, Any]]]:
    """The fake's tasks: the manifest's good lines, plus one spare task behind each bad line."""
    rng = random.Random(20261129)
    project_id = project_id_for(71)
    shares = [f"{rng.getrandbits(128):032x}"[:8] + "-aaaa-4bbb-8ccc-" + f"{i:012d}" for i in range(SHARES)]
    records = [
        {"project_id": project_id, "share_id": shares[i % SHARES], "task_id": _task_id(rng), "status": "SUCCESS",
         "end_time": OLD}
        for i in range(GOOD + BAD)
    ]  # fmt: skip
    tasks = [
        Task(share_id=r["share_id"], task_id=r["task_id"], type="import", status="SUCCESS", end_time=OLD)
        for r in records
    ]
    return Inventory(project_id, shares, tasks), records[:GOOD], records[GOOD:]


@pytest.fixture(scope="module")
def manifest_parts() -> tuple[Inventory, list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, bytes]], float]:
    inventory, good, spare = build_inventory()
    start = time.monotonic()
    bad = generate_bad_lines(spare)
    return inventory, good, spare, bad, time.monotonic() - start


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_100k_line_manifest_with_10pct_bad_lines(
    redis_url: str,
    tmp_path: Path,
    manifest_parts: tuple[Inventory, list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, bytes]], float],
) -> None:
    inventory, good, spare, bad, drew_s = manifest_parts
    # Bad lines at seeded random places among the good ones.
    rng = random.Random(7)
    total = GOOD + BAD
    bad_at = sorted(rng.sample(range(1, total + 1), BAD))
    manifest = tmp_path / "tasks.jsonl"
    bad_numbers: dict[int, str] = {}
    with manifest.open("wb") as out:
        goods, bads = iter(good), iter(bad)
        wanted = set(bad_at)
        for number in range(1, total + 1):
            if number in wanted:
                kind, line = next(bads)
                bad_numbers[number] = kind
            else:
                line = _line(next(goods))
            out.write(line + b"\n")
    kinds: dict[str, int] = {}
    for kind in bad_numbers.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    figure("bad lines drawn by Hypothesis (s)", round(drew_s, 1))
    figure("bad lines by kind", dict(sorted(kinds.items())))
    figure("manifest size (MB)", round(manifest.stat().st_size / 1e6, 1))

    with FakeApi(FakeConfig(latency_ms=0, deleting_seconds=0), inventory=inventory).start() as fake:
        cluster = Cluster(
            redis_url=redis_url,
            fake=fake,
            tmp=tmp_path,
            settings={
                **FAST,
                "SFS_CLEANUP_RATE_LIMIT": "20000",
                "SFS_CLEANUP_RATE_BURST": "500",
                "SFS_CLEANUP_BATCH_SIZE": "500",
                "SFS_CLEANUP_BATCH_CONCURRENCY": "16",
            },
        )
        try:
            cluster.start_worker("w1", concurrency=2)
            start = time.monotonic()
            code, report = cluster.purge_json("--manifest", str(manifest), "--wait", timeout=500)
            elapsed = time.monotonic() - start
            rows = export_rows(cluster, report["run_id"])
        finally:
            cluster.stop()
        stats = fake.stats()
        deleted = {(d["share_id"], d["task_id"]) for d in fake.deleted()}
        left = {(t["share_id"], t["task_id"]) for t in fake.tasks()}

    figure("purge --wait of 100,000 lines (s)", round(elapsed, 1))
    figure("outcomes", {k: v for k, v in report["outcomes"].items() if v})
    figure("achieved DELETE rate (/s)", report["rate"]["average_rps"])
    assert code == 0, report
    assert report["selected"] == total
    counted = assert_one_outcome_per_task(report, rows)
    assert counted == {"deleted": GOOD, "rejected": BAD}, counted
    # Every bad line refused, with its exact line number and a reason.
    refused = {int(r["input_line"]): r for r in rows if r["outcome"] == "rejected"}
    assert set(refused) == set(bad_numbers)
    assert all(r["reason"] for r in refused.values())
    # None of them reached the API: exactly the good lines' DELETEs, all accepted, nothing else;
    # the spare task behind every bad line is still there.
    assert stats["requests_by_method_status"] == {"DELETE": {"202": GOOD}}, stats["requests_by_method_status"]
    assert stats["deletes_accepted"] == GOOD
    assert deleted == {(r["share_id"], r["task_id"]) for r in good}
    assert left == {(r["share_id"], r["task_id"]) for r in spare}


def test_a_line_naming_another_project_is_refused_with_its_line_number(redis_url: str, tmp_path: Path) -> None:
    """A well-formed line whose project is not the configured one: refused with its line number."""
    inventory, good, _spare = build_inventory()
    with FakeApi(FakeConfig(latency_ms=0), inventory=inventory).start() as fake:
        cluster = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings=dict(FAST))
        manifest = tmp_path / "m.jsonl"
        other = {**good[1], "project_id": "0" * 32}
        manifest.write_bytes(_line(good[0]) + b"\n" + _line(other) + b"\n")
        _code, report = cluster.purge_json("--manifest", str(manifest), "--dry-run")
        rows = export_rows(cluster, report["run_id"])
    assert report["outcomes"]["rejected"] == 1
    assert [r["input_line"] for r in rows if r["outcome"] == "rejected"] == [2]


# --- the delete-time recheck -------------------------------------------------------------------------
@pytest.fixture
def small_fake() -> Iterator[FakeApi]:
    with FakeApi(FakeConfig(shares=2, tasks_per_share=300, seed=61, latency_ms=2)).start() as api:
        yield api


@pytest.mark.slow
def test_protected_or_changed_after_planning_is_skipped_at_delete_time(
    redis_url: str, small_fake: FakeApi, tmp_path: Path
) -> None:
    fake = small_fake
    cluster = Cluster(
        redis_url=redis_url, fake=fake, tmp=tmp_path, settings={**FAST, "SFS_CLEANUP_RECHECK_STATUS": "true"}
    )
    try:
        # Plan with no worker running; then change the world before any job starts.
        run_id = cluster.cli("purge", "--max-deletions", "200", check=True).stdout.strip().splitlines()[-1]
        planned = export_rows(cluster, run_id)
        assert len(planned) == 200
        held, changed = planned[0], planned[1]
        cluster.cli("protect", "add", "--task", held["task_id"], check=True)
        record = next(t for t in fake.tasks(changed["share_id"]) if t["task_id"] == changed["task_id"])
        assert record["status"] in ("SUCCESS", "FAIL")
        fake.load_tasks([{**record, "status": "DOING", "end_time": None}])  # it was restarted

        cluster.start_worker("w1", concurrency=2)
        report = cli_json(cluster, "runs", "show", run_id, "--wait", "--json")
        rows = {r["task_id"]: r for r in export_rows(cluster, run_id)}
        task = cli_json(cluster, "audit", "task", changed["task_id"], "--run", run_id, "--json")
    finally:
        cluster.stop()
    stats = fake.stats()
    by_status = stats["requests_by_method_status"]
    figure("outcomes", {k: v for k, v in report["outcomes"].items() if v})
    figure("requests", by_status)
    assert report["status"] == "finished"
    assert_one_outcome_per_task(report, list(rows.values()))
    assert rows[held["task_id"]]["outcome"] == "skipped"
    assert rows[held["task_id"]]["reason"] == "protected_task"
    assert rows[held["task_id"]]["attempts"] == 0  # protection is read before any call
    assert rows[changed["task_id"]]["outcome"] == "skipped"
    assert rows[changed["task_id"]]["reason"] == "status_changed:DOING"
    assert [a["op"] for a in task[0]["attempts"]] == ["show"]  # shown, never deleted
    # Neither got a DELETE: every DELETE the fake saw was accepted, and they are not among them.
    deleted = {d["task_id"] for d in fake.deleted()}
    assert held["task_id"] not in deleted and changed["task_id"] not in deleted
    assert by_status["DELETE"] == {"202": 198} and stats["deletes_accepted"] == 198
    # One show per task not held by protection, plus the planner's one listing page per share.
    assert by_status["GET"] == {"200": 199 + len(fake.share_ids)}
    assert report["outcomes"]["deleted"] == 198 and report["outcomes"]["skipped"] == 2
