"""Shared helpers of the parity scripts: locate an official checkout, import its modules, compare, record.

The official repositories are never copied into pydistill: each script takes the path of a checkout
(``--official PATH`` or an environment variable) and imports its modules from there at run time.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"
ENV_VARS = {"dc": "PYDISTILL_OFFICIAL_DC", "mtt": "PYDISTILL_OFFICIAL_MTT", "dd": "PYDISTILL_OFFICIAL_DD"}
EXPECTED_FILES = {
    "dc": ("utils.py", "networks.py", "main.py"),
    "mtt": ("utils.py", "reparam_module.py", "distill.py"),
    "dd": ("train_distilled_image.py", "base_options.py", "networks"),
}


def official_path(kind: str, arg: str | None) -> Path:
    """The checkout of official repository ``kind`` ("dc", "mtt", "dd"): ``arg`` or $PYDISTILL_OFFICIAL_<KIND>."""
    path = arg or os.environ.get(ENV_VARS[kind])
    if not path:
        raise SystemExit(f"give the official {kind} checkout with --official PATH or ${ENV_VARS[kind]}")
    path = Path(path).expanduser().resolve()
    missing = [f for f in EXPECTED_FILES[kind] if not (path / f).exists()]
    if missing:
        raise SystemExit(f"--official {path} does not look like the official {kind} checkout (missing {missing})")
    return path


def import_official(path: Path, *names: str):
    """Import modules ``names`` from the checkout ``path`` (put first on sys.path); returns them in order."""
    sys.path.insert(0, str(path))
    return [importlib.import_module(n) for n in names]


def git_commit(path: Path) -> str:
    """The commit the checkout was made from ('.official-commit' file written at checkout time), if known."""
    f = path / ".official-commit"
    return f.read_text().strip() if f.exists() else "unknown"


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def environment() -> dict:
    import numpy

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": "cpu: " + (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def write_result(name: str, record: dict, table_md: str) -> None:
    """benchmarks/results/parity-<name>.json and .md (the table plus the environment)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {**record, "environment": environment()}
    (RESULTS / f"parity-{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    env = record["environment"]
    head = (
        f"# Parity: {name}\n\n{env['date']}, {env['device']}, {env['threads']} thread(s), torch {env['torch']}, "
        f"python {env['python']}. Official checkout: {record.get('official_commit', 'unknown')}.\n"
        f"Regenerate: `{record.get('command', '')}`\n\n"
    )
    (RESULTS / f"parity-{name}.md").write_text(head + table_md.rstrip() + "\n")


class Timer:
    """Seconds of a block: ``with Timer() as t: ...``; ``t.s`` wall clock, ``t.cpu`` this process's CPU time
    (on a shared machine with one thread, CPU time is the less contended measure)."""

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0


def interleaved_timing(sides: dict, reps: int, warmup: int = 1) -> dict:
    """Time each callable of ``sides`` (name -> f(rep)) ``reps`` times, alternating sides every rep (after
    ``warmup`` untimed calls each), so both see the same machine load. Returns per side the lists and medians
    of wall and CPU seconds."""
    import statistics

    for r in range(warmup):
        for f in sides.values():
            f(-1 - r)
    out = {name: {"wall_s": [], "cpu_s": []} for name in sides}
    for r in range(reps):
        for name, f in sides.items() if r % 2 == 0 else reversed(list(sides.items())):
            with Timer() as t:
                f(r)
            out[name]["wall_s"].append(t.s)
            out[name]["cpu_s"].append(t.cpu)
            print(f"  rep {r}: {name} {t.s:.2f} s wall, {t.cpu:.2f} s cpu", flush=True)
    for v in out.values():
        v["median_wall_s"] = statistics.median(v["wall_s"])
        v["median_cpu_s"] = statistics.median(v["cpu_s"])
    return out


def timing_table(tm: dict, label: str) -> str:
    """Markdown rows of :func:`interleaved_timing` output (medians and the pydistill / official ratios)."""
    o, p = tm["official"], tm["pydistill"]
    n = len(o["wall_s"])
    return (
        "| timing (" + label + f", median of {n} interleaved) | official | pydistill | ratio |\n|---|---|---|---|\n"
        f"| wall s | {o['median_wall_s']:.2f} | {p['median_wall_s']:.2f} | "
        f"{p['median_wall_s'] / o['median_wall_s']:.3f} |\n"
        f"| process CPU s | {o['median_cpu_s']:.2f} | {p['median_cpu_s']:.2f} | "
        f"{p['median_cpu_s'] / o['median_cpu_s']:.3f} |\n"
    )


def time_against_official(official_it, ours_it, reps: int, warmup: int, label: str) -> tuple[dict, str]:
    """Interleaved timing of one official and one pydistill iteration (``f(rep)`` each): the record fields
    (timing, ratio_wall, ratio_cpu) and the markdown table; prints the ratios."""
    tm = interleaved_timing({"official": official_it, "pydistill": ours_it}, reps, warmup=warmup)
    fields = {
        "timing": tm,
        "ratio_wall": tm["pydistill"]["median_wall_s"] / tm["official"]["median_wall_s"],
        "ratio_cpu": tm["pydistill"]["median_cpu_s"] / tm["official"]["median_cpu_s"],
    }
    print(f"  ratio wall {fields['ratio_wall']:.3f}, cpu {fields['ratio_cpu']:.3f}")
    return fields, "\n" + timing_table(tm, label)
