"""``sfs-cleanup audit``: one task's history across runs, a run's completion report, its evidence bundle."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from scheduler.cli.common import UserError, context, err, friendly, operator, out, print_json

audit_app = typer.Typer(help="Read the audit: one task's history, or a run's completion report.", no_args_is_help=True)


@audit_app.command("task")
@friendly
def audit_task(
    task_id: str,
    run: Annotated[str | None, typer.Option(help="Only this run.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every attempt on a task, with HTTP status, error code and request ID."""
    from scheduler.export import attempt_dict
    from worker.ids import check_task_id

    ctx = context()
    check_task_id(task_id)
    records = list(ctx.audit.find_task(task_id, [run] if run else None))
    if run and not records and not ctx.audit.run(run):  # its keys are gone: read its archived bundle
        from scheduler.archive.read import archived_task

        records = archived_task(ctx.settings, ctx.redis, ctx.audit.keys, run, task_id)
    if as_json:
        print_json(
            [
                {
                    "run_id": r.run_id,
                    "share_id": r.share_id,
                    "outcome": r.final.outcome.value if r.final else "pending",
                    "reason": r.final.reason if r.final else None,
                    "attempts": [attempt_dict(a) for a in r.attempts],
                }
                for r in records
            ]
        )
        return
    if not records:
        raise UserError(f"task {task_id} is in no recent run" + ("" if run else " (an archived run: add --run RUN_ID)"))
    for r in records:
        final = r.final.outcome.value if r.final else "pending"
        out.print(f"run {r.run_id}  share {r.share_id}  outcome [bold]{final}[/bold]")
        table = Table("#", "op", "time", "HTTP", "verdict", "error", "request ID", "ms", "worker")
        from datetime import UTC, datetime

        for a in r.attempts:
            table.add_row(
                str(a.n),
                a.op,
                datetime.fromtimestamp(a.at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                str(a.status or "-"),
                a.verdict,
                " ".join(x for x in (a.code, a.msg) if x),
                a.request_id or "",
                f"{a.latency_ms:.0f}",
                a.worker,
            )
        out.print(table)


@audit_app.command("export")
@friendly
def audit_export(
    run_id: str,
    format: Annotated[str, typer.Option(help="jsonl or csv.")] = "jsonl",
    output: Annotated[Path | None, typer.Option(help="Write here instead of standard output.")] = None,
) -> None:
    """A completion report: one row per selected task (and per refused input line)."""
    if format not in ("jsonl", "csv"):
        raise UserError(f"--format {format!r}: use jsonl or csv")
    ctx = context()
    meta = ctx.audit.run(run_id)
    from scheduler.archive.read import archived_run, export_archived
    from scheduler.export import write_export

    if not meta and archived_run(ctx.redis, ctx.audit.keys, run_id) is None:
        raise UserError(f"no run {run_id!r}")
    stream = output.open("w", newline="") if output else sys.stdout
    try:
        if meta:
            rows = write_export(ctx.audit, run_id, meta.get("project_id", ""), stream, format)
        else:  # its keys are gone: from its archived bundle
            rows = export_archived(ctx.settings, ctx.redis, ctx.audit.keys, run_id, stream, format)
    finally:
        if output:
            stream.close()
    if output:
        err.print(f"{rows} rows written to {output}")


@audit_app.command("bundle")
@friendly
def audit_bundle(
    run_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="The archive to write (.zip).")],
    force: Annotated[bool, typer.Option("--force", help="Replace the file if it exists.")] = False,
    allow_incomplete: Annotated[
        bool, typer.Option("--allow-incomplete", help="Bundle a run that is not over (the bundle says so).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A run's evidence bundle; prints its digest (the SHA-256 of its MANIFEST) for the ticket."""
    from scheduler.evidence.bundle import write_bundle

    ctx = context()
    made = write_bundle(
        ctx.audit, ctx.settings, run_id, output, made_by=operator(), force=force, allow_incomplete=allow_incomplete
    )
    if as_json:
        print_json(
            {"file": str(output), "digest": made.digest, "rows": made.rows, "refused": made.refused}
            | {"complete": made.complete}
        )
        return
    note = "" if made.complete else " (run not over: --allow-incomplete)"
    err.print(f"{made.rows} task rows and {made.refused} refused lines written to {output}{note}", markup=False)
    sys.stdout.write(f"{made.digest}  {output}\n")


@audit_app.command("verify")
@friendly
def audit_verify(
    run_id: Annotated[str | None, typer.Argument(help="A run in Redis: recompute its hash chain.")] = None,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="An evidence bundle (sfs-cleanup audit bundle), offline.")
    ] = None,
    digest: Annotated[str | None, typer.Option(help="The digest recorded when it was made (the ticket's).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a run's audit in Redis (RUN_ID), or an evidence bundle offline (--bundle): exit 8 if broken."""
    if (run_id is None) == (bundle is None):
        raise UserError("give a RUN_ID (the audit in Redis) or --bundle FILE (offline), not both")
    if bundle is None:
        assert run_id is not None
        if digest is not None:
            raise UserError("--digest goes with --bundle")
        _verify_run(run_id, as_json=as_json)
        return
    _verify_bundle(bundle, digest, as_json=as_json)


def _verify_run(run_id: str, *, as_json: bool) -> None:
    from scheduler.evidence.verify import EXIT_TAMPERED

    ctx = context()
    if not ctx.audit.run(run_id):
        raise UserError(f"no run {run_id!r}")
    result = ctx.audit.verify_run(run_id)
    if as_json:
        print_json(result.as_dict())
    else:
        lines = [f"note: {x}" for x in result.notes]
        if result.intact:
            lines.insert(
                0, f"ok: {result.batches} batches, {result.entries} chain entries, each batch's head recomputed"
            )
            lines.insert(1, "ok: the run's counters equal a recount of its records")
            lines.append(f"intact: run {run_id} (chain head {result.head})")
            sys.stdout.write("\n".join(lines) + "\n")
        else:
            sys.stdout.write(
                "\n".join(lines + [f"broken: {p}" for p in result.problems[1:]])
                + ("\n" if lines or result.problems[1:] else "")
            )
            err.print(f"error: run {run_id}: first broken link: {result.problems[0]}", markup=False, highlight=False)
    if not result.intact:
        raise typer.Exit(EXIT_TAMPERED)


def _verify_bundle(bundle: Path, digest: str | None, *, as_json: bool) -> None:
    from scheduler.evidence.verify import BundleProblemError, verify_bundle

    if not bundle.is_file():
        raise UserError(f"no file {bundle}")
    try:
        # Only the chain's key is read (no other setting): a keyed chain's hashes need it.
        key = os.environ.get("SFS_CLEANUP_AUDIT_KEY")
        result = verify_bundle(bundle, digest, audit_key=key.encode() if key else None)
    except BundleProblemError as exc:
        if as_json:
            print_json({"file": str(bundle), "sound": False, "problem": str(exc)})
        err.print(f"error: {bundle}: {exc}", markup=False, highlight=False)
        raise typer.Exit(exc.exit_code) from exc
    if as_json:
        print_json(
            {"file": str(bundle), "sound": True, "digest": result.digest, "checked": result.checked}
            | {"notes": result.notes}
        )
        return
    # Plain lines, never wrapped: a digest cut in two cannot be compared with the ticket's.
    lines = [f"ok: {x}" for x in result.checked] + [f"note: {x}" for x in result.notes]
    sys.stdout.write("\n".join([*lines, f"sound: {bundle} (digest {result.digest})"]) + "\n")
