"""Run reports: one dict for ``--json`` and a table for people."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.ledger import OVER, Audit, Outcome, RunMeta, RunStatus, Trigger

EXIT_OK = 0
EXIT_FAILED_TASKS = 3
EXIT_STOPPED = 4
EXIT_NOT_OVER = 5
EXIT_HELD = 7  # planned and held for approval: nothing sent


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_report(audit: Audit, run_id: str) -> dict[str, Any]:
    meta = audit.run(run_id)
    if not meta:
        raise KeyError(run_id)
    outcomes = audit.counts(run_id)
    selected = int(meta.get("selected", -1))
    started = float(meta.get("planned_at") or meta.get("created_at") or time.time())
    ended = float(meta["finished_at"]) if meta.get("finished_at") else time.time()
    rate = audit.rate_profile(run_id)
    plan = json.loads(meta.get("summary") or "{}")
    report = {
        "run_id": run_id,
        "status": meta.get("status"),
        "dry_run": RunMeta.of(meta).dry_run,
        "trigger": meta.get("trigger"),
        "source": meta.get("source"),
        "parent_run": meta.get("parent_run"),
        "reason": meta.get("reason") or None,
        "hold_reason": meta.get("hold_reason") or None,
        "approved_by": meta.get("approved_by") or None,
        "plan": plan,
        "selected": selected,
        "outcomes": outcomes,
        "pending": max(0, selected - sum(outcomes.values())) if selected >= 0 else None,
        "attempts": int(meta.get("attempts", 0)),
        "retries": int(meta.get("retries", 0)),
        "throttled": int(meta.get("throttled", 0)),
        "seen": int(meta.get("seen", 0)),
        "not_selected": json.loads(meta.get("not_selected") or "{}"),
        "batches": int(meta.get("batches", 0)),
        "created_at": _iso(meta.get("created_at")),
        "finished_at": _iso(meta.get("finished_at")),
        "elapsed_s": round(max(0.0, ended - started), 2),
        "rate": rate,
        "policy": json.loads(meta.get("policy") or "{}"),
        # The audit's hash chain: every attempt and final outcome, in order (``audit verify``).
        "chain": {
            "head": meta.get("chain_head") or None,
            "entries": int(meta.get("chain_n", 0)),
            "keyed": audit.chain.keyed,
        },
    }
    if plan.get("targets"):
        report["targets"] = by_target(audit, run_id, plan["targets"], over=meta.get("status") in OVER)
    return report


def by_target(audit: Audit, run_id: str, planned: dict[str, Any], *, over: bool) -> dict[str, dict[str, Any]]:
    """A run over a targets file, per target: planned and rejected, and once the run is over, the
    outcomes (read from every task's record, so only then: a running run shows its plan).

    Per target, ``selected`` (planned + rejected) is the sum of its outcomes once the run is over.
    """
    rows: dict[str, dict[str, Any]] = {}
    for name, info in planned.items():
        row = {key: info.get(key) for key in ("region", "endpoint", "project_id", "credentials")}
        row |= {"planned": int(info.get("planned", 0)), "rejected": int(info.get("rejected", 0))}
        row["selected"] = row["planned"] + row["rejected"]
        if "discovery" in info:
            row["discovery"] = info["discovery"]
        rows[name] = row
    if not over:
        return rows
    outcomes: dict[str, Counter[str]] = {name: Counter() for name in rows}
    for batch in audit.iter_batches(run_id):
        counts = outcomes.get(batch.target or "")
        if counts is None:
            continue
        for record in audit.task_records(batch):
            counts[record.final.outcome.value if record.final else "pending"] += 1
    for name, row in rows.items():
        counts = outcomes[name]
        if row["rejected"]:
            counts[Outcome.REJECTED.value] += row["rejected"]
        row["outcomes"] = dict(counts)
    return rows


def exit_code(report: dict[str, Any]) -> int:
    """0: finished, no failed task. 3: finished with failed tasks. 4: aborted or cancelled.
    5: not over. 7: held for approval."""
    status = report.get("status")
    if status == RunStatus.HELD:
        return EXIT_HELD
    if status in (RunStatus.ABORTED, RunStatus.CANCELLED):
        return EXIT_STOPPED
    if status != RunStatus.FINISHED:
        return EXIT_NOT_OVER
    return EXIT_FAILED_TASKS if report["outcomes"].get(Outcome.FAILED, 0) else EXIT_OK


def render_report(report: dict[str, Any], console: Console) -> None:
    title = f"Run {report['run_id']}: {report['status']}" + (" (dry run)" if report["dry_run"] else "")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("selected", str(report["selected"]))
    for outcome in Outcome:
        count = report["outcomes"].get(outcome.value, 0)
        if count or outcome in (Outcome.DELETED, Outcome.ALREADY_GONE, Outcome.FAILED, Outcome.SKIPPED):
            table.add_row(outcome.value.replace("_", " "), str(count))
    if report.get("pending"):
        table.add_row("pending", str(report["pending"]))
    table.add_row("API requests", str(report["rate"]["requests"]))
    table.add_row("retries", str(report["retries"]))
    table.add_row("throttled answers (429)", str(report["throttled"]))
    table.add_row("elapsed", f"{report['elapsed_s']:.1f} s")
    table.add_row("achieved request rate", f"{report['rate']['average_rps']:.1f} /s")
    rate = report["rate"]
    table.add_row("busiest second", f"{rate['busiest_second']} requests")
    if rate.get("seconds"):
        table.add_row("requests per second (median / p95)", f"{rate['median_rps']} / {rate['p95_rps']}")
    chain = report.get("chain") or {}
    table.add_row("audit chain entries", str(chain.get("entries", 0)) + ("" if chain.get("keyed") else " (unkeyed)"))
    console.print(table)
    if chain.get("head"):
        # Whole, on its own line: a head cut short cannot be compared with a bundle's.
        console.print(f"audit chain head: {chain['head']}", soft_wrap=True, highlight=False)
    for name, row in (report.get("targets") or {}).items():
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted((row.get("outcomes") or {}).items()))
        where = f"{row.get('region')} {row.get('project_id')}"
        console.print(f"target {name} ({where}): planned {row['planned']}" + (f"; {counts}" if counts else ""))
    if report.get("reason"):
        console.print(f"[bold]reason:[/bold] {report['reason']}")
    if report.get("parent_run"):
        # A replay retries a run's failures; an apply sends a dry run's reviewed plan.
        verb = "applies the plan of dry run" if report.get("trigger") == Trigger.APPLY else "replays run"
        console.print(f"{verb} {report['parent_run']}")


def render_plan_summary(plan: dict[str, Any], console: Console) -> None:
    table = Table(title="Plan", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("tasks seen", str(plan["seen"]))
    table.add_row("selected", str(plan["planned"]))
    if plan["rejected"]:
        table.add_row("rejected input", str(plan["rejected"]))
    for reason, count in sorted(plan["not_selected"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"not selected: {reason}", str(count))
    for share, count in sorted(plan["shares"].items()):
        table.add_row(f"share {share}", str(count))
    for share, skipped in sorted(plan.get("skipped_shares", {}).items()):
        table.add_row(f"skipped share {share}", str(skipped.get("reason")))
    for kind, count in sorted(plan.get("types", {}).items()):
        table.add_row(f"type {kind}", str(count))
    if plan.get("oldest_end"):
        table.add_row("ended between", f"{plan['oldest_end']} and {plan['newest_end']}")
    table.add_row("cap", "none" if plan.get("cap") is None else str(plan["cap"]))
    for n, task in enumerate(plan.get("sample", [])):
        table.add_row("sample" if n == 0 else "", task)
    if plan.get("hold_reason") and plan["hold_reason"] != "awaiting_consent":
        table.add_row("held", str(plan["hold_reason"]))
    console.print(table)
