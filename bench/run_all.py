"""`make bench`: every benchmark in turn, each writing its own section of docs/benchmarks.md.

One at a time on purpose: benchmarks measured side by side in one run must not share the two
cores with another benchmark. A failing benchmark is reported and the others still run.
"""
from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = ("bench.ingest", "bench.udf_efficiency", "bench.stats_bench", "bench.mix_bench",
              "bench.loader_bench", "bench.train_memory", "bench.scale", "bench.cluster_bench")


def main(argv: list[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    failed = []
    for name in names:
        started = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module(name)
            saved, sys.argv = sys.argv, [name]  # each parses its own (empty) command line
            try:
                code = module.main()
            finally:
                sys.argv = saved
        except Exception as exc:  # report and go on: one broken benchmark hides no others
            print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
            code = 1
        if code:
            failed.append(name)
        print(f"== {name}: {time.monotonic() - started:.0f}s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
