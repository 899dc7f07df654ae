"""Run every andon benchmark in turn: overhead, throughput, then where-the-cost-is.

    sudo make bench                          # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --quick    # smaller loops, 3 repetitions: a smoke run (~3 min)

Each benchmark prints its tables and writes bench/results/<kind>-<date>.json; see
bench/README.md for how to read them. Nothing here passes or fails on a time: the numbers
are ratios against a baseline measured in the same run, for a person to read.
"""

from __future__ import annotations

import argparse
import sys
import time

import cost
import overhead
import report
import snapshot
import throughput
import tracers
import workloads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k open/close, 300 execs, 3 s throughput, 3 repetitions")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--skip", default="", help="comma-separated: overhead,throughput,cost")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    tracers.stop_on_signals()
    try:
        notes = tracers.check_prerequisites()
    except tracers.BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"bench: {n}")
    workloads.build()
    code = snapshot.freeze()
    report.console.print(f"measuring andon at {code['commit']} ({code['commit_subject']})"
                         + (f", with uncommitted changes in {len(code['dirty'])} file(s)" if code["dirty"] else "")
                         + f"; frozen in {code['path']}")
    repeat = args.repeat or (3 if args.quick else 5)
    t0 = time.monotonic()
    if "overhead" not in skip:
        overhead.main(["--no-build", "--repeat", str(repeat)]
                      + (["--openclose-n", "100000", "--execloop-n", "300"] if args.quick else []))
    if "throughput" not in skip:
        throughput.main(["--no-build"] + (["--seconds", "3"] if args.quick else []))
    if "cost" not in skip:
        cost.main(["--no-build", "--repeat", str(repeat), "--perf"] + (["--n", "100000", "--stats-repeat", "1", "--exec-n", "300"] if args.quick else []))
    report.console.print(f"all benchmarks done in {time.monotonic() - t0:.0f} s; JSON in {report.RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
