"""One-off cost a run pays before its first iteration: CPU seconds to import the ops a DC/DSA/DM step uses
(``pydistill.ops``) versus the official ``utils``/``networks`` modules, each in a fresh interpreter after
``import torch`` (median of ``--reps``).

    python benchmarks/parity/import_cost.py --official /path/to/DatasetCondensation
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_commit, official_path, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import sys, time; sys.path.insert(0, {path!r}); import torch; t = time.process_time(); {stmt}; "
    "print(time.process_time() - t, 'torch._dynamo' in sys.modules)"
)


def cost(path: Path, stmt: str, reps: int) -> tuple[float, bool]:
    runs = []
    for _ in range(reps):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(path=str(path), stmt=stmt)],
            capture_output=True,
            text=True,
            check=True,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
        s, dyn = out.stdout.split()
        runs.append(float(s))
    return statistics.median(runs), dyn == "True"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", help="checkout of VICO-UoE/DatasetCondensation (or $PYDISTILL_OFFICIAL_DC)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--name", default="import-cost")
    a = p.parse_args(argv)
    path = official_path("dc", a.official)
    ours, ours_dyn = cost(ROOT, "import pydistill.ops", a.reps)
    off, off_dyn = cost(path, "import utils, networks", a.reps)
    print(
        f"import pydistill.ops: {ours:.3f} s CPU (torch._dynamo imported: {ours_dyn}); official utils+networks: "
        f"{off:.3f} s CPU (torch._dynamo imported: {off_dyn})"
    )
    record = {
        "ours_cpu_s": ours,
        "ours_imports_dynamo": ours_dyn,
        "official_cpu_s": off,
        "official_imports_dynamo": off_dyn,
        "reps": a.reps,
        "official_commit": git_commit(path),
        "command": "python benchmarks/parity/import_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    md = (
        "| import (fresh interpreter, after torch) | CPU s (median) | imports torch._dynamo |\n|---|---|---|\n"
        f"| `pydistill.ops` | {ours:.3f} | {ours_dyn} |\n| official `utils`, `networks` | {off:.3f} | {off_dyn} |\n"
    )
    write_result(a.name, record, md)


if __name__ == "__main__":
    main()
