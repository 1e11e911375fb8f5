"""The results document each benchmark writes: where it goes, its header and targets table, writing it."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from tests.benchmarks import procstat

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "bench-results"


def new_doc(benchmark: str, machine: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The header every results file starts with, then ``fields`` in the order given."""
    return {
        "benchmark": benchmark,
        "schema": 1,
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": machine,
        **fields,
    }


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def workdir_for(given: Path | None, benchmark: str) -> Path:
    """``given``, or a new temporary directory; it exists on return."""
    workdir = given or Path(tempfile.mkdtemp(prefix=f"sfs-bench-{benchmark}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def finish(doc: dict[str, Any], output: Path, started: float, workdir: Path) -> None:
    """Drop the run's inventories, stamp the end of the run and write ``doc`` to ``output``."""
    for seed in workdir.rglob("*.jsonl"):  # inventories are big; logs stay for a look
        seed.unlink()
    doc["machine"]["load_average_end"] = procstat.load_average()
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(output, doc)


def targets_table(targets: list[dict[str, Any]]) -> Table:
    """The ``targets`` of a results document: each one's measure, and whether it was met."""
    table = Table(title="Targets")
    for column in ("target", "measured", "met"):
        table.add_column(column)
    for t in targets:
        table.add_row(t["name"], str(t["measured"]), "yes" if t["met"] else "NO")
    return table


def spread(values: list[float | None]) -> dict[str, Any]:
    """Median and [min..max] of a case's repeated measures (``None``: not measured, left out).

    A noisy machine shows as a wide spread, not as a different claim: benchmarks report the
    median with its spread, never one run.
    """
    got = sorted(v for v in values if v is not None)
    if not got:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(got), 2), "min": got[0], "max": got[-1], "n": len(got)}


def format_spread(stat: dict[str, Any], digits: int = 1) -> str:
    """``1,397 [1,324..1,415]``: a spread as the tables and the docs print it."""
    if stat.get("median") is None:
        return "-"
    fmt = f"{{:,.{digits}f}}"
    if stat["n"] == 1:
        return fmt.format(stat["median"])
    return f"{fmt.format(stat['median'])} [{fmt.format(stat['min'])}..{fmt.format(stat['max'])}]"
