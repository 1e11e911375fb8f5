"""Inventory sources: manifests (JSON lines, CSV) and the live listing, all streamed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.inventory import (
    MAX_FIELD_CHARS,
    MAX_LINE_BYTES,
    InventoryItem,
    ManifestError,
    Rejected,
    printable,
    read_live,
    read_manifest,
)
from worker.ids import InvalidIdError
from worker.models import TaskInfo

P = "0123456789abcdef0123456789abcdef"
S = "11111111-2222-3333-4444-555555555555"


def jline(task_id: object = "t1", **extra: object) -> bytes:
    fields: dict[str, object] = {"project_id": P, "share_id": S, "task_id": task_id, **extra}
    return json.dumps(fields).encode()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read(path: Path, **kwargs: str) -> tuple[list[TaskInfo], list[Rejected]]:
    items = list(read_manifest(path, **kwargs))
    tasks = [item for item in items if isinstance(item, TaskInfo)]
    rejected = [item for item in items if isinstance(item, Rejected)]
    assert len(tasks) + len(rejected) == len(items)
    return tasks, rejected


# --- JSON lines: the happy path ----------------------------------------------------------------


def test_jsonl_reads_every_field(tmp_path: Path) -> None:
    lines = [
        jline("t1", status="SUCCESS", type="export", end_time="2024-01-02T03:04:05"),
        jline("t2", status="FAIL", type="import_metadata", end_time="2024-01-02T03:04:05+08:00"),
        jline("t3"),
    ]
    tasks, rejected = read(write(tmp_path, "m.jsonl", b"\n".join(lines) + b"\n"))
    assert rejected == []
    assert [t.task_id for t in tasks] == ["t1", "t2", "t3"]
    assert tasks[0] == TaskInfo(P, S, "t1", "SUCCESS", "export", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert tasks[1].end_time == datetime(2024, 1, 1, 19, 4, 5, tzinfo=UTC)
    assert (tasks[2].status, tasks[2].type, tasks[2].end_time) == (None, None, None)
    assert tasks[0].raw["task_id"] == "t1"


def test_jsonl_bom_crlf_blank_lines_and_no_final_newline(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + jline("t1") + b"\r\n\r\n   \n\t\r\n" + jline("t2") + b"\r\n\n" + jline("t3")
    tasks, rejected = read(write(tmp_path, "m.ndjson", data))
    assert rejected == []
    assert [t.task_id for t in tasks] == ["t1", "t2", "t3"]


def test_jsonl_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    data = b"\n" + jline("t1") + b"\n\n" + jline("a/b") + b"\n"
    _, rejected = read(write(tmp_path, "m.jsonl", data))
    assert [(r.line, r.reason) for r in rejected] == [(4, "task_id contains a path character '/'")]
    assert str(rejected[0]) == f"{tmp_path / 'm.jsonl'}: line 4: task_id contains a path character '/'"


def test_jsonl_accepts_the_api_task_fields_and_ignores_them(tmp_path: Path) -> None:
    api = {"start_time": "x", "src_target": "d", "dest_target": "d", "src_prefix": "p", "dest_prefix": "p"}
    tasks, rejected = read(write(tmp_path, "m.jsonl", jline(message="done", **api)))
    assert rejected == [] and tasks[0].task_id == "t1"


def test_empty_optional_fields_are_unknown(tmp_path: Path) -> None:
    data = jline("t1", status="", type=None, end_time=None) + b"\n"
    tasks, _ = read(write(tmp_path, "m.jsonl", data))
    assert (tasks[0].status, tasks[0].type, tasks[0].end_time) == (None, None, None)


@pytest.mark.parametrize("end_time", ["garbage", "2024-13-01T00:00:00", "", "yesterday", 1704067200, True, []])
def test_unparsable_end_time_keeps_the_task_with_unknown_time(tmp_path: Path, end_time: object) -> None:
    tasks, rejected = read(write(tmp_path, "m.jsonl", jline(status="SUCCESS", end_time=end_time)))
    assert rejected == []
    assert tasks[0].end_time is None and tasks[0].status == "SUCCESS"


def test_project_id_falls_back_only_when_absent(tmp_path: Path) -> None:
    lines = [
        json.dumps({"share_id": S, "task_id": "t1"}),
        json.dumps({"project_id": "", "share_id": S, "task_id": "t2"}),
        json.dumps({"project_id": "other", "share_id": S, "task_id": "t3"}),
    ]
    path = write(tmp_path, "m.jsonl", "\n".join(lines).encode())
    tasks, rejected = read(path, default_project_id=P)
    assert [(t.project_id, t.task_id) for t in tasks] == [(P, "t1"), ("other", "t3")]
    assert [(r.line, r.reason) for r in rejected] == [(2, "project_id is empty")]
    _, rejected = read(path)
    assert [(r.line, r.reason) for r in rejected] == [(1, "missing project_id"), (2, "project_id is empty")]


def test_an_invalid_default_project_id_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", jline())
    with pytest.raises(InvalidIdError):
        list(read_manifest(path, default_project_id="../p"))


# --- JSON lines: every kind of bad line ----------------------------------------------------------

BAD_JSONL: list[tuple[str, bytes, str]] = [
    ("dot-dot", jline("../x"), "task_id contains a path character"),
    ("slash", jline("a/b"), "task_id contains a path character '/'"),
    ("backslash", jline("a\\b"), "task_id contains a path character '\\\\'"),
    ("percent", jline("a%2Fb"), "task_id contains '%'"),
    ("empty id", jline(""), "task_id is empty"),
    ("long id", jline("a" * 65), "task_id is 65 characters long"),
    ("unicode id", jline("t\u00e2che"), "task_id contains a non-ASCII character"),
    ("escaped control", jline("t\u0007"), "task_id contains a control character '\\x07'"),
    ("raw tab in string", b'{"project_id":"p","share_id":"s","task_id":"a\tb"}', "not valid JSON: Invalid control"),
    ("space", jline("a b"), "task_id contains ' '"),
    ("id not a string", jline(12345), "task_id must be a string, not int"),
    ("id null", jline(None), "task_id must be a string, not NoneType"),
    ("bad share", json.dumps({"project_id": P, "share_id": "s/1", "task_id": "t"}).encode(), "share_id contains"),
    ("missing share", json.dumps({"project_id": P, "task_id": "t"}).encode(), "missing share_id"),
    ("missing task", json.dumps({"project_id": P, "share_id": S}).encode(), "missing task_id"),
    ("nul byte", jline("t1")[:-1] + b',"message":"a\x00b"}', "contains a NUL byte"),
    ("invalid utf-8", jline("t1")[:-1] + b',"message":"\xff\xfe"}', "invalid UTF-8 at byte"),
    ("huge field", jline(message="m" * (MAX_FIELD_CHARS + 1)), "message is too long (4097 characters"),
    ("huge id", jline("a" * 10_000), "task_id is too long (10000 characters"),
    ("unknown status", jline(status="DONE"), "status 'DONE' is not one of SUCCESS, FAIL, DOING, DELETING"),
    ("lowercase status", jline(status="success"), "status 'success' is not one of"),
    ("status not a string", jline(status=1), "status must be a string, not a number"),
    ("unknown type", jline(type="migrate"), "type 'migrate' is not one of import, import_metadata"),
    ("not json", b"{project_id: p}", "not valid JSON: Expecting property name"),
    ("truncated json", jline()[:-1], "not valid JSON"),
    ("array", b'["p", "s", "t"]', "not a JSON object (got an array)"),
    ("scalar", b"42", "not a JSON object (got a number)"),
    ("duplicate key", b'{"project_id":"p","share_id":"s","task_id":"t1","task_id":"../x"}', "duplicate key"),
    ("unknown key", jline(stauts="SUCCESS"), "unknown key 'stauts'"),
    ("deep nesting", b"[" * 50_000, "not valid JSON: nested too deeply"),
    ("huge integer", b'{"message": ' + b"9" * 50_000 + b"}", "not valid JSON"),
    ("over-long line", jline(message="m" * MAX_LINE_BYTES), f"line is longer than {MAX_LINE_BYTES} bytes"),
]


@pytest.mark.parametrize(("line", "reason"), [case[1:] for case in BAD_JSONL], ids=[c[0] for c in BAD_JSONL])
def test_a_bad_jsonl_line_is_rejected_alone(tmp_path: Path, line: bytes, reason: str) -> None:
    data = jline("good1") + b"\n" + line + b"\n" + jline("good2") + b"\n"
    tasks, rejected = read(write(tmp_path, "m.jsonl", data))
    assert [t.task_id for t in tasks] == ["good1", "good2"]
    assert len(rejected) == 1
    assert rejected[0].line == 2
    assert reason in rejected[0].reason
    assert rejected[0].raw.isascii() and rejected[0].raw.isprintable()
    assert len(rejected[0].raw) <= 200


def test_line_length_bound_is_exact_and_ignores_the_line_ending(tmp_path: Path) -> None:
    def padded(task_id: str, size: int) -> bytes:
        base = jline(task_id)
        return base[:-1] + b" " * (size - len(base)) + b"}"  # JSON allows whitespace padding

    lines = [padded("fits", MAX_LINE_BYTES), padded("fitscrlf", MAX_LINE_BYTES), padded("over", MAX_LINE_BYTES + 1)]
    data = lines[0] + b"\n" + lines[1] + b"\r\n" + lines[2] + b"\n" + jline("after")
    tasks, rejected = read(write(tmp_path, "m.jsonl", data))
    assert [t.task_id for t in tasks] == ["fits", "fitscrlf", "after"]
    assert [r.line for r in rejected] == [3]
    assert rejected[0].raw.endswith("...")


def test_an_over_long_first_line_after_a_bom_is_one_line(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + jline(message="m" * (2 * MAX_LINE_BYTES)) + b"\n" + jline("after")
    tasks, rejected = read(write(tmp_path, "m.jsonl", data))
    assert [t.task_id for t in tasks] == ["after"]
    assert [r.line for r in rejected] == [1]


def test_a_huge_line_is_skipped_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with path.open("wb") as out:
        out.write(jline("before") + b"\n" + b'{"message": "')
        for _ in range(160):
            out.write(b"x" * 65536)  # a 10 MiB line
        out.write(b'"}\n' + jline("after"))
    tracemalloc.start()
    try:
        tasks, rejected = read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [t.task_id for t in tasks] == ["before", "after"]
    assert [r.line for r in rejected] == [2]
    assert peak < 2 * 1024 * 1024


# --- CSV -----------------------------------------------------------------------------------------


def test_csv_happy_path_any_column_order_quotes_bom_crlf(tmp_path: Path) -> None:
    data = (
        "\ufeffstatus, task_id ,share_id,project_id,type,end_time,message\r\n"
        f'SUCCESS,t1,{S},{P},export,2024-01-02T03:04:05Z,"done, ok"\r\n'
        "\r\n"
        f'FAIL,"t2",{S},{P},,,\r\n'
        f",t3,{S},{P},,not a time,"
    ).encode()
    tasks, rejected = read(write(tmp_path, "m.csv", data))
    assert rejected == []
    assert tasks[0] == TaskInfo(P, S, "t1", "SUCCESS", "export", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert tasks[0].raw["message"] == "done, ok"
    assert (tasks[1].task_id, tasks[1].status, tasks[1].type) == ("t2", "FAIL", None)
    assert (tasks[2].status, tasks[2].end_time) == (None, None)


def test_csv_without_project_column_uses_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", f"share_id,task_id\n{S},t1\n".encode())
    tasks, _ = read(path, default_project_id=P)
    assert tasks[0].project_id == P
    with pytest.raises(ManifestError, match="missing column project_id \\(or give a default project\\)"):
        list(read_manifest(path))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"project_id,share_id,task_id,foo", "line 2: header: unknown column 'foo'"),
        (b"project_id,share_id,task_id,task_id", "duplicate column 'task_id'"),
        (b"project_id,share_id,status", "missing column task_id"),
        (b"project_id,share_id,\xff", "line 2: header: invalid UTF-8"),
        (b"project_id,share_id,task\x00_id", "header: contains a NUL byte"),
        (b'project_id,"share_id,task_id', "header: not valid CSV"),
    ],
)
def test_an_unusable_csv_header_rejects_the_whole_file(tmp_path: Path, header: bytes, message: str) -> None:
    path = write(tmp_path, "m.csv", b"\n" + header + b"\n" + f"{P},{S},t1\n".encode())
    with pytest.raises(ManifestError) as info:
        list(read_manifest(path))
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


BAD_CSV: list[tuple[str, str, str]] = [
    ("too few", f"{P},{S}", "has 2 fields, the header has 4"),
    ("too many", f"{P},{S},t,SUCCESS,extra", "has 5 fields, the header has 4"),
    ("one field", "junk", "has 1 fields, the header has 4"),
    ("dot-dot", f"{P},{S},../x,SUCCESS", "task_id contains a path character"),
    ("slash", f"{P},{S},a/b,SUCCESS", "task_id contains a path character '/'"),
    ("percent", f"{P},{S},%2F,SUCCESS", "task_id contains '%'"),
    ("empty id", f"{P},{S},,SUCCESS", "task_id is empty"),
    ("empty share", f"{P},,t,SUCCESS", "share_id is empty"),
    ("unicode", f"{P},{S},t\u00e9,SUCCESS", "task_id contains a non-ASCII character"),
    ("control", f"{P},{S},t\x1b[31m,SUCCESS", "task_id contains a control character '\\x1b'"),
    ("unterminated quote", f'{P},{S},"t1,SUCCESS', "not valid CSV"),
    ("bare CR", f"{P},{S},t\r1,SUCCESS", "not valid CSV"),
    ("unknown status", f"{P},{S},t1,RUNNING", "status 'RUNNING' is not one of"),
    ("status with space", f"{P},{S},t1,SUCCESS ", "status 'SUCCESS ' is not one of"),
    ("huge field", f"{P},{S},{'a' * 5000},SUCCESS", "task_id is too long (5000 characters"),
]


@pytest.mark.parametrize(("line", "reason"), [case[1:] for case in BAD_CSV], ids=[c[0] for c in BAD_CSV])
def test_a_bad_csv_line_is_rejected_alone(tmp_path: Path, line: str, reason: str) -> None:
    data = f"project_id,share_id,task_id,status\n{P},{S},good1,SUCCESS\n{line}\n{P},{S},good2,FAIL".encode()
    tasks, rejected = read(write(tmp_path, "m.csv", data))
    assert [t.task_id for t in tasks] == ["good1", "good2"]
    assert [(r.line, r.source) for r in rejected] == [(3, str(tmp_path / "m.csv"))]
    assert reason in rejected[0].reason


def test_csv_nul_invalid_utf8_and_overlong_lines(tmp_path: Path) -> None:
    header = b"project_id,share_id,task_id\n"
    good = f"{P},{S},".encode()
    data = header + good + b"t\x00\n" + good + b"t\xc3\n" + good + b"x" * (MAX_LINE_BYTES + 5) + b"\n" + good + b"ok"
    tasks, rejected = read(write(tmp_path, "m.csv", data))
    assert [t.task_id for t in tasks] == ["ok"]
    assert [(r.line, r.reason) for r in rejected] == [
        (2, "contains a NUL byte"),
        (3, f"invalid UTF-8 at byte {len(good) + 2}"),
        (4, f"line is longer than {MAX_LINE_BYTES} bytes"),
    ]
    assert rejected[0].raw.endswith("t\\x00")
    assert rejected[1].raw.endswith("t\\xc3")


# --- Format detection and file errors ------------------------------------------------------------


def test_other_extensions_are_sniffed(tmp_path: Path) -> None:
    tasks, _ = read(write(tmp_path, "m.txt", b"\xef\xbb\xbf\n\n  " + jline("j1")))
    assert [t.task_id for t in tasks] == ["j1"]
    tasks, _ = read(write(tmp_path, "m", f"\nproject_id,share_id,task_id\n{P},{S},c1\n".encode()))
    assert [t.task_id for t in tasks] == ["c1"]
    assert list(read_manifest(write(tmp_path, "empty.dat", b" \n\n"))) == []


def test_a_json_array_file_is_refused_clearly(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", b"  [" + jline() + b"]")
    with pytest.raises(ManifestError, match="JSON array"):
        list(read_manifest(path))


def test_a_missing_file_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot open"):
        list(read_manifest(tmp_path / "nope.csv"))


def test_empty_manifests_yield_nothing(tmp_path: Path) -> None:
    assert list(read_manifest(write(tmp_path, "m.csv", b""))) == []
    assert list(read_manifest(write(tmp_path, "m.jsonl", b"\r\n\n"))) == []
    assert list(read_manifest(write(tmp_path, "h.csv", b"project_id,share_id,task_id\r\n"))) == []


def test_printable_escapes_and_bounds() -> None:
    assert printable("a\x00b\x1b[0m\u00e9\n") == "a\\x00b\\x1b[0m\\xe9\\x0a"
    assert printable(b"ok\xff") == "ok\\xff"
    shown = printable("x" * 1000)
    assert len(shown) == 200 and shown.endswith("...")
    assert printable("x" * 200) == "x" * 200
    assert len(printable("\u00e9" * 200)) == 200


# --- Property: good lines come through, bad lines are reported at their exact number ----------------

_ID = st.text("abcdefABCDEF0123456789-", min_size=1, max_size=64)
_BAD_ID = st.one_of(
    st.sampled_from(["", "../x", "a/b", "%2F", "a\\b", "t\u00e9", "a b", "x" * 65, "t\x00", "t\x7f", "t."]),
    st.text(min_size=1, max_size=20).filter(lambda s: re.fullmatch(r"[A-Za-z0-9-]+", s) is None),
)


@st.composite
def _good_line(draw: st.DrawFn) -> tuple[bytes, str]:
    task_id = draw(_ID)
    extra = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "status": st.sampled_from(["SUCCESS", "FAIL", "DOING", "DELETING", ""]),
                "type": st.sampled_from(["import", "import_metadata", "preload", "export"]),
                "end_time": st.text(max_size=30),
                "message": st.text(max_size=50),
            },
        )
    )
    return jline(task_id, **extra), task_id


_BAD_LINE = st.one_of(
    _BAD_ID.map(jline),
    st.just(b"{not json"),
    st.just(b"[1, 2]"),
    st.just(jline("t\x00")[:-1] + b"\x00}"),
    st.binary(min_size=1, max_size=20).map(lambda b: b"\xff" + b.replace(b"\n", b"")),
    st.sampled_from(["RUNNING", "ok", "success"]).map(lambda s: jline(status=s)),
    st.just(json.dumps({"project_id": P, "task_id": "t"}).encode()),
    st.just(jline(foo=1)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.one_of(
            _good_line().map(lambda g: ("good", g[0], g[1])),
            _BAD_LINE.map(lambda b: ("bad", b, "")),
            st.sampled_from([b"", b"   ", b"\t"]).map(lambda b: ("blank", b, "")),
        ),
        max_size=40,
    ),
    crlf=st.booleans(),
    final_newline=st.booleans(),
)
def test_every_bad_line_is_reported_at_its_number_and_every_good_line_yields_a_task(
    tmp_path: Path, lines: list[tuple[str, bytes, str]], crlf: bool, final_newline: bool
) -> None:
    ending = b"\r\n" if crlf else b"\n"
    data = ending.join(line for _, line, _ in lines) + (ending if final_newline else b"")
    items = list(read_manifest(write(tmp_path, "prop.jsonl", data)))
    expected_bad = [number for number, (kind, _, _) in enumerate(lines, start=1) if kind == "bad"]
    expected_good = [task_id for kind, _, task_id in lines if kind == "good"]
    assert [item.line for item in items if isinstance(item, Rejected)] == expected_bad
    assert [item.task_id for item in items if isinstance(item, TaskInfo)] == expected_good


# --- Streaming -----------------------------------------------------------------------------------


_PEAK_RSS_SCRIPT = """
import sys
from pathlib import Path
from scheduler.inventory import read_manifest
counts = {"tasks": 0, "rejected": 0}
for item in read_manifest(Path(sys.argv[1])):
    counts["tasks" if type(item).__name__ == "TaskInfo" else "rejected"] += 1
# VmHWM is this process's own peak; ru_maxrss would carry the forking parent's over exec.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
print(counts["tasks"], counts["rejected"], hwm)
"""


def _peak_rss_kib(path: Path) -> tuple[int, int, int]:
    # A fresh interpreter: its peak RSS is real memory (C allocations included), untouched by
    # whatever earlier tests allocated, and tracemalloc's 5x slowdown is avoided.
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, str(path)], capture_output=True, text=True, check=True, timeout=120
    )
    tasks, rejected, peak = map(int, done.stdout.split())
    return tasks, rejected, peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the peak RSS")
def test_a_200000_line_manifest_streams_in_flat_memory(tmp_path: Path) -> None:
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    with big.open("wb") as out:
        for number in range(200_000):
            task_id = "../bad" if number % 1000 == 999 else f"{number:032x}"
            out.write(jline(task_id, status="SUCCESS", type="export", end_time="2024-01-01T00:00:00") + b"\n")
    small.write_bytes(jline("t1", status="SUCCESS") + b"\n")
    assert big.stat().st_size > 25 * 1024 * 1024
    tasks, rejected, peak_big = _peak_rss_kib(big)
    assert (tasks, rejected) == (199_800, 200)
    *_, peak_small = _peak_rss_kib(small)
    # Holding 200,000 tasks would take hundreds of MiB; streaming costs next to nothing.
    assert peak_big - peak_small < 20 * 1024, f"peak RSS grew by {peak_big - peak_small} KiB"


def test_a_csv_manifest_streams_in_flat_python_memory(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    with path.open("w", encoding="utf-8") as out:
        out.write("project_id,share_id,task_id,status,end_time\n")
        for number in range(20_000):
            out.write(f"{P},{S},{number:032x},FAIL,2024-01-01T00:00:00\n")
    tracemalloc.start()
    try:
        count = sum(1 for item in read_manifest(path) if isinstance(item, TaskInfo))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 512 * 1024, f"peak {peak} bytes"  # 20,000 tasks held at once would be ~20 MiB


def test_file_errors_surface_when_iteration_starts(tmp_path: Path) -> None:
    items = read_manifest(tmp_path / "missing.csv")  # a generator: nothing is opened yet
    with pytest.raises(ManifestError, match=r"missing\.csv: cannot open"):
        next(items)


# --- The live listing -------------------------------------------------------------------------------


@dataclass
class FakeLister:
    """Pages through canned tasks, recording every page request, like the API client."""

    tasks: dict[str, list[TaskInfo]]
    page_size: int = 3
    pages: list[tuple[str, int, str | None, str | None]] = field(default_factory=list)
    fail_on: str | None = None

    def list_tasks(self, share_id: str, *, status: str | None = None, type: str | None = None) -> Iterator[TaskInfo]:
        offset = 0
        while True:
            self.pages.append((share_id, offset, status, type))
            if share_id == self.fail_on:
                raise ConnectionError("listing failed")
            page = [
                t
                for t in self.tasks.get(share_id, [])
                if (status is None or t.status == status) and (type is None or t.type == type)
            ][offset : offset + self.page_size]
            yield from page
            if len(page) < self.page_size:
                return
            offset += self.page_size


S2 = "22222222-2222-3333-4444-555555555555"


def _live_tasks(share_id: str, count: int) -> list[TaskInfo]:
    statuses = ["SUCCESS", "FAIL", "DOING"]
    return [TaskInfo(P, share_id, f"{share_id[:2]}t{n}", statuses[n % 3], "export") for n in range(count)]


def test_read_live_lists_every_page_of_every_share() -> None:
    lister = FakeLister({S: _live_tasks(S, 7), S2: _live_tasks(S2, 6)})
    items = list(read_live(lister, P, [S, S2, S]))
    assert [t.task_id for t in items if isinstance(t, TaskInfo)] == [
        *(f"11t{n}" for n in range(7)),
        *(f"22t{n}" for n in range(6)),
    ]
    # 7 tasks: pages at 0, 3, 6; 6 tasks: 0, 3, 6 (the empty page ends it); the repeated share once.
    assert [(share[:2], offset) for share, offset, _, _ in lister.pages] == [
        ("11", 0), ("11", 3), ("11", 6), ("22", 0), ("22", 3), ("22", 6),
    ]  # fmt: skip


def test_read_live_passes_single_filters_to_the_server() -> None:
    lister = FakeLister({S: _live_tasks(S, 9)})
    items = list(read_live(lister, P, [S], statuses=["SUCCESS"], types=["export"]))
    assert {i.status for i in items if isinstance(i, TaskInfo)} == {"SUCCESS"}
    assert {(status, kind) for _, _, status, kind in lister.pages} == {("SUCCESS", "export")}
    assert len(lister.pages) == 2  # 3 matching tasks: a full page, then an empty one


@pytest.mark.parametrize(("statuses", "types"), [(["SUCCESS", "FAIL"], None), (None, []), ([], ["import", "export"])])
def test_read_live_lists_everything_for_several_or_no_filters(
    statuses: list[str] | None, types: list[str] | None
) -> None:
    lister = FakeLister({S: _live_tasks(S, 9)})
    items = list(read_live(lister, P, [S], statuses=statuses, types=types))
    assert len(items) == 9
    assert {(status, kind) for _, _, status, kind in lister.pages} == {(None, None)}


def test_read_live_is_lazy_page_by_page() -> None:
    lister = FakeLister({S: _live_tasks(S, 9)})
    items = read_live(lister, P, [S])
    next(items)
    assert len(lister.pages) == 1


def test_read_live_rejects_odd_listed_tasks_and_goes_on() -> None:
    odd = [
        TaskInfo(P, S, "ok1", "SUCCESS"),
        TaskInfo(P, S, "../etc", "SUCCESS"),
        TaskInfo(P, S2, "elsewhere", "SUCCESS"),
        TaskInfo("otherproject", S, "wrongproj", "SUCCESS"),
        TaskInfo(P, S, "newstatus", "QUEUED"),
        TaskInfo(P, S, "newtype", "SUCCESS", "migrate"),
        TaskInfo(P, S, "ok2", None, None),
    ]
    items = list(read_live(FakeLister({S: odd}, page_size=100), P, [S]))
    assert [i.task_id for i in items if isinstance(i, TaskInfo)] == ["ok1", "ok2"]
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert [(r.source, r.line) for r in rejected] == [(f"live:{S}", n) for n in (2, 3, 4, 5, 6)]
    assert "task_id contains a path character" in rejected[0].reason
    assert "names share" in rejected[1].reason
    assert "names project" in rejected[2].reason
    assert "status 'QUEUED'" in rejected[3].reason
    assert "type 'migrate'" in rejected[4].reason
    assert '"task_id": "../etc"' in rejected[0].raw


def test_read_live_listing_errors_propagate() -> None:
    lister = FakeLister({S: _live_tasks(S, 2)}, fail_on=S2)
    items: list[InventoryItem] = []
    with pytest.raises(ConnectionError):
        items.extend(read_live(lister, P, [S, S2]))
    assert len(items) == 2  # what came before the failure was already streamed


def test_read_live_refuses_bad_arguments() -> None:
    lister = FakeLister({})
    with pytest.raises(InvalidIdError):
        list(read_live(lister, P, ["a/b"]))
    with pytest.raises(InvalidIdError):
        list(read_live(lister, "", [S]))
    with pytest.raises(TypeError, match="not one string"):
        list(read_live(lister, P, [S], statuses="SUCCESS"))
    assert lister.pages == []
