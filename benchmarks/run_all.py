"""Run every op benchmark side by side and record the table.

    python benchmarks/run_all.py --device cuda [--quick] [--ops match_loss,sum_tree]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import add_speedups, format_table, record  # noqa: E402

OPS = ["match_loss", "trajectory_loss", "diff_augment", "sum_tree"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--tag", default="")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    rows = []
    for op in args.ops.split(","):
        mod = importlib.import_module(f"bench_{op}")
        rows += mod.run(args.device, args.quick)
    rows = add_speedups(rows)
    print(format_table(rows))
    if not args.no_record:
        print("recorded", record(rows, args.device, args.tag or ("quick" if args.quick else "")))
    return rows


if __name__ == "__main__":
    main()
