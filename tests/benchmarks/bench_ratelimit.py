"""Benchmark: our fleet-wide limiter against Celery's built-in ``rate_limit``, measured by the server.

``python -m tests.benchmarks.bench_ratelimit [--quick]`` runs, for each R (50/s and 200/s) and
each fleet size (1, 2 and 4 Celery workers, ``-c 2`` each as deployed; ``--concurrency``),
``sfs-cleanup purge --wait --json`` against the fake SFS Turbo API (20 ms latency, its own
process), in five configurations:

* ``free``: ``SFS_CLEANUP_RATE_LIMIT=R`` and a fake that never throttles: our pacing alone, as
  the server sees it (targets: achieved rate >= 0.95 x R, busiest second <= R + burst);
* ``ours``: the same with the fake's 429 threshold also at R (a sliding second), i.e. our limit
  equal to the server's (targets as above, and no 429);
* ``margin``: our limit at ``--margin`` (0.9) x the server's R;
* ``over``: our limit ``--over`` (1.2) x the server's R: the run must still finish with no
  failed task, and only a few 429s;
* ``builtin``: the baseline, Celery's per-task ``rate_limit=f"{R}/s"`` on N worker instances
  (``tests/benchmarks/builtin_app.py``, one DELETE per Celery task), against the same fake
  with no throttle, so the server counts what Celery sends (expected: about N x R).

For the runs against a fake that does not throttle, the 429s a limit of R would have answered
are computed from the server's timestamps with the fake's own admission rule. Every figure
comes from the fake (requests, 429s, the busiest sliding second of DELETE arrivals, the arrival
time of each accepted DELETE); our audit's busiest second is printed beside it for comparison. Each run
deletes max(2,000, R x 20 s) tasks (``--quick``: max(500, R x 5 s)). Results go to
``bench-results/ratelimit.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tests.benchmarks.common import RESULTS_DIR, Harness, RunSpec, deletions_for, machine_facts, write_results

KINDS = ("free", "ours", "margin", "over", "builtin")


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_ratelimit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="~500 deletions per run instead of 2,000+")
    parser.add_argument("--rates", type=_floats, default=[50.0, 200.0], help="R values, comma-separated (50,200)")
    parser.add_argument("--workers", type=_ints, default=[1, 2, 4], help="worker processes, comma-separated (1,2,4)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"which configurations ({','.join(KINDS)})")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="Celery pool processes per worker instance in our runs (2, as in the deployment files)",
    )
    parser.add_argument("--headroom", type=float, default=None, help="SFS_CLEANUP_RATE_HEADROOM (default: ours)")
    parser.add_argument("--ramp", type=float, default=None, help="SFS_CLEANUP_RATE_RAMP_S (default: ours)")
    parser.add_argument("--burst", type=int, default=1, help="SFS_CLEANUP_RATE_BURST of our runs (1)")
    parser.add_argument("--over", type=float, default=1.2, help="our limit / the server's in the 'over' runs (1.2)")
    parser.add_argument("--margin", type=float, default=0.9, help="our limit / the server's in the 'margin' runs (0.9)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="deletions = R x this, at least 2,000 (20; --quick: 5, at least 500)",
    )
    parser.add_argument("--deletions", type=int, default=None, help="fixed deletions per run (overrides --seconds)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the fake's latency per call (20)")
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIR / "ratelimit.json",
        help="results JSON (bench-results/ratelimit.json)",
    )
    # ``python -m tests.benchmarks`` hands every benchmark the same flags: others' are ignored.
    args, unknown_flags = parser.parse_known_args(argv)
    if unknown_flags:
        print(f"ratelimit: ignoring options for other benchmarks: {' '.join(unknown_flags)}", file=sys.stderr)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    return args


def plan(args: argparse.Namespace) -> list[RunSpec]:
    seconds = args.seconds if args.seconds is not None else (5.0 if args.quick else 20.0)
    floor = 500 if args.quick else 2000
    specs: list[RunSpec] = []
    for rate in args.rates:
        deletions = args.deletions or deletions_for(rate, seconds, floor)
        for workers in args.workers:
            common: dict[str, Any] = {"workers": workers, "deletions": deletions, "latency_ms": args.latency_ms}
            ours = {**common, "concurrency": args.concurrency, "headroom": args.headroom, "ramp_s": args.ramp}
            if "free" in args.kinds:
                # Our pacing alone, as the server sees it: no throttle, like the builtin baseline.
                specs.append(
                    RunSpec(
                        "ours",
                        rate=rate,
                        server_limit=0.0,
                        burst=args.burst,
                        label=f"free w{workers} R{rate:g}",
                        **ours,
                    )
                )
            if "ours" in args.kinds:
                specs.append(
                    RunSpec(
                        "ours",
                        rate=rate,
                        server_limit=rate,
                        burst=args.burst,
                        label=f"ours w{workers} R{rate:g}",
                        **ours,
                    )
                )
            if "margin" in args.kinds:
                specs.append(
                    RunSpec(
                        "ours",
                        rate=round(rate * args.margin, 3),
                        server_limit=rate,
                        burst=args.burst,
                        reference=rate,
                        label=f"margin{args.margin:g} w{workers} R{rate:g}",
                        **ours,
                    )
                )
            if "over" in args.kinds:
                specs.append(
                    RunSpec(
                        "ours",
                        rate=round(rate * args.over, 3),
                        server_limit=rate,
                        burst=args.burst,
                        reference=rate,
                        label=f"over{args.over:g} w{workers} R{rate:g}",
                        **ours,
                    )
                )
            if "builtin" in args.kinds:
                # Enough pool processes for one instance to reach R at this latency (E1 used -c 2).
                concurrency = max(2, math.ceil(rate * (args.latency_ms / 1000) * 2))
                specs.append(
                    RunSpec(
                        "builtin",
                        rate=rate,
                        server_limit=0.0,
                        concurrency=concurrency,
                        label=f"builtin w{workers} R{rate:g}",
                        **common,
                    )
                )
    return specs


def _x(value: float, r: float) -> str:
    return f"{value:.1f} ({value / r:.2f}x)"


def render(runs: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="Rate limit benchmark: figures from the fake API (server-side), ratios against R")
    for name, justify in (
        ("run", "left"),
        ("R /s", "right"),
        ("our limit /s", "right"),
        ("server 429 above", "right"),
        ("burst", "right"),
        ("deletions", "right"),
        ("achieved /s (xR)", "right"),
        ("steady /s (xR)", "right"),
        ("busiest 1 s DELETE (xR) / after 2 s", "right"),
        ("bound", "right"),
        ("429s", "right"),
        ("failed", "right"),
        ("audit busiest s / sent", "right"),
        ("CPU s wrk/fake/redis", "right"),
        ("load / stall p99,max ms", "right"),
        ("targets", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for run in runs:
        spec, server, r = run["spec"], run["server"], run["r"]
        targets = run["targets"]
        if spec["kind"] == "ours":
            audit_busiest = (
                f"{(run['audit'].get('rate') or {}).get('busiest_second', '?')} / "
                f"{run['audit'].get('sent_busiest_second', '?')}"
            )
            over = spec["server_limit"] and spec["rate"] > spec["server_limit"]
            checks = ["finished", "failed"] if over else ["achieved", "busiest", "429"]
            if not spec["server_limit"]:
                checks = ["achieved", "busiest"]
            marks = {
                "achieved": targets["achieved_ge_0_95_limit"],
                "busiest": targets["busiest_le_limit_plus_burst"],
                "429": targets["zero_429"],
                "finished": run["audit"].get("status") == "finished" and targets["all_deleted"],
                "failed": targets["zero_failed"],
            }
            verdict = " ".join(f"{name}:{'ok' if marks[name] else 'MISS'}" for name in checks)
            verdict = verdict.replace("achieved:", "rate:").replace("busiest:", "peak:")
            burst = str(spec["burst"])
            four29 = str(server["answered_429"])
            if not spec["server_limit"]:
                four29 = f"0 (would be {run.get('would_429_at_r', '?')})"
        else:
            audit_busiest = "-"
            verdict = f"overshoot {run['ratios']['busiest_over_r']:.2f}x"
            burst = "1 (bucket)"
            four29 = f"0 (would be {run.get('would_429_at_r', '?')})"
        cpu = run["cpu_s"]
        table.add_row(
            run["name"],
            f"{r:g}",
            f"{spec['rate']:g}" if spec["kind"] == "ours" else "-",
            f"{spec['server_limit']:g}" if spec["server_limit"] else "none",
            burst,
            str(server["deletes_accepted"]),
            _x(server["achieved_rps"], r),
            _x(server["steady_rps"], r),
            f"{server['busiest_second_delete']} ({server['busiest_second_delete'] / r:.2f}x)"
            f" / {server.get('busiest_second_after_2s', '-')}",
            f"{run['busiest_bound']:g}",
            four29,
            str(run["failed"]),
            audit_busiest,
            f"{cpu['workers']:.0f}/{cpu['fake']:.0f}/{cpu['redis']:.0f}",
            f"{run['loadavg_after'][0]:.1f} / {run['stall']['p99_ms']:.0f},{run['stall']['max_ms']:.0f}",
            verdict,
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=230)
    specs = plan(args)
    facts = machine_facts()
    console.print(
        f"{len(specs)} runs; {facts['cpu_count']} CPUs, Python {facts['python']}, "
        f"load average {' '.join(f'{v:.2f}' for v in facts['loadavg'])}"
    )
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    params = {
        "quick": args.quick,
        "rates": args.rates,
        "workers": args.workers,
        "kinds": args.kinds,
        "burst": args.burst,
        "over": args.over,
        "margin": args.margin,
        "latency_ms": args.latency_ms,
        "builtin_server_limit": "none (the fake counts what Celery sends)",
    }
    with Harness(log=lambda line: console.print(f"  {line}", highlight=False)) as harness:
        for spec in specs:
            try:
                result = harness.run(spec)
            except Exception as exc:  # one broken run must not lose the others' figures
                console.print(f"[red]{spec.name} failed: {exc}[/red]")
                runs.append({"name": spec.name, "error": str(exc)})
                continue
            runs.append(result)
            s = result["server"]
            console.print(
                f"  -> {s['deletes_accepted']} deleted, steady {s['steady_rps']:.1f}/s, busiest DELETE second "
                f"{s['busiest_second_delete']}, 429s {s['answered_429']}, failed {result['failed']}, "
                f"wall {result['wall_s']:.1f} s, load {result['loadavg_after'][0]:.1f}, "
                f"stall p99 {result['stall']['p99_ms']:.0f} ms max {result['stall']['max_ms']:.0f} ms",
                highlight=False,
            )
    params["total_s"] = round(time.monotonic() - started, 1)
    path = write_results(args.output, runs, params)
    render([r for r in runs if "error" not in r], console)
    console.print(f"load average now {' '.join(f'{v:.2f}' for v in machine_facts()['loadavg'])}; figures in {path}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
