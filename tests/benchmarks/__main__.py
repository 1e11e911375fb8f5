"""Run the benchmarks: ``python -m tests.benchmarks [--quick] [ratelimit] [throughput] [scale]``.

Each benchmark runs against the fake API on 127.0.0.1, prints a table with ratios against a
baseline measured in the same run, and writes its figures to ``bench-results/<name>.json``.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "ratelimit": "tests.benchmarks.bench_ratelimit",
    "throughput": "tests.benchmarks.bench_throughput",
    "scale": "tests.benchmarks.bench_scale",
}


def main(argv: list[str]) -> int:
    names = [a for a in argv if a in BENCHMARKS] or list(BENCHMARKS)
    flags = [a for a in argv if a not in BENCHMARKS]
    # A word right after an option is taken as that option's value (``--repeat 3``).
    unknown = [
        a
        for i, a in enumerate(argv)
        if not a.startswith("-") and a not in BENCHMARKS and not (i and argv[i - 1].startswith("-"))
    ]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    worst = 0
    for name in names:
        print(f"\n=== benchmark: {name} ===", flush=True)
        module = importlib.import_module(BENCHMARKS[name])
        worst = max(worst, int(module.main(flags)))
    return worst


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
