"""Run every op benchmark side by side and record the table.

    python benchmarks/ops/run_all.py --device cuda [--quick] [--ops match_loss,sum_tree] [--threads 1] [--tag ops]

Records ``benchmarks/results/<date>-<device>[-<tag>].{json,md}`` (tag defaults to "quick" with --quick) with
device, versions, CPU thread count and date; ``--note`` adds a line of context (e.g. a shared, loaded CPU).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common.py

from common import add_speedups, format_table, record, set_threads  # noqa: E402

OPS = ["match_loss", "trajectory_loss", "diff_augment", "sum_tree"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--note", default="", help="free text recorded with the results")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if unknown or not ops:
        p.error(f"--ops must be a comma-separated subset of {','.join(OPS)}, got {args.ops!r}")
    set_threads(args.threads)
    rows = []
    for op in ops:
        t0 = time.perf_counter()
        mod = importlib.import_module(f"bench_{op}")
        rows += mod.run(args.device, args.quick)
        print(f"{op}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rows = add_speedups(rows)
    print(format_table(rows))
    if not args.no_record:
        print("recorded", record(rows, args.device, args.tag or ("quick" if args.quick else ""), args.note))
    return rows


if __name__ == "__main__":
    main()
