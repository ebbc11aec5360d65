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
EXPECTED_FILES = {"dc": ("utils.py", "networks.py", "main.py"), "mtt": ("utils.py", "reparam_module.py", "distill.py"),
                  "dd": ("train_distilled_image.py", "base_options.py", "networks")}


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

    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": "cpu: " + (platform.processor() or platform.machine()), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}


def write_result(name: str, record: dict, table_md: str) -> None:
    """benchmarks/results/parity-<name>.json and .md (the table plus the environment)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {**record, "environment": environment()}
    (RESULTS / f"parity-{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    env = record["environment"]
    head = (f"# Parity: {name}\n\n{env['date']}, {env['device']}, {env['threads']} thread(s), torch {env['torch']}, "
            f"python {env['python']}. Official checkout: {record.get('official_commit', 'unknown')}.\n"
            f"Regenerate: `{record.get('command', '')}`\n\n")
    (RESULTS / f"parity-{name}.md").write_text(head + table_md.rstrip() + "\n")


class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...; t.s``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
