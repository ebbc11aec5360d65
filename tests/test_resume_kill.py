"""Resume after a crash: SIGKILL a `pydistill distill` run after a checkpoint is written, rerun the same command,
and get the same synthetic set, bit for bit, as an uninterrupted run (CPU)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pydistill.runner import CHECKPOINT
from pydistill.synthetic import SyntheticSet
from pydistill.utils import load_checked

ITERATIONS = 8
ROOT = Path(__file__).resolve().parents[1]


def _cmd(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pydistill",
        "distill",
        "--method",
        "dsa",
        "--dataset",
        "digits",
        "--ipc",
        "1",
        "--iterations",
        str(ITERATIONS),
        "--checkpoint-every",
        "1",
        "--no-eval",
        "--no-progress",
        "--device",
        "cpu",
        "--seed",
        "3",
        "--set",
        "batch_real=8",
        "--set",
        'model_kwargs={"width": 8}',
        "--out",
        str(out),
    ]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # the same thread count in every run (bit-exact CPU results)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("WORLD_SIZE", None)
    return env


def _run(out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(out), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _start_and_kill(out: Path) -> int:
    """Start the run, SIGKILL it as soon as a checkpoint exists; returns the checkpointed iteration."""
    proc = subprocess.Popen(_cmd(out), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / CHECKPOINT
    deadline = time.monotonic() + 240
    try:
        while not ckpt.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before writing a checkpoint: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within 240 s")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-run (rc {proc.returncode})"
    return int(load_checked(ckpt)["iteration"])


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    killed = tmp_path / "killed"
    at = _start_and_kill(killed)
    assert 1 <= at < ITERATIONS, f"killed after iteration {at}: not mid-run"
    assert not (killed / "synthetic.safetensors").exists()
    leftovers = [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]  # a torn temporary file at most
    assert len(leftovers) <= 1, leftovers

    _run(killed)  # the same command resumes
    import json

    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["resumed_from_iteration"] == at

    full = tmp_path / "full"
    _run(full)
    a = SyntheticSet.load(killed / "synthetic.safetensors")
    b = SyntheticSet.load(full / "synthetic.safetensors")
    assert torch.equal(a.images, b.images), "resumed run differs from the uninterrupted one"
    assert torch.equal(a.labels, b.labels)
    ca, cb = load_checked(killed / CHECKPOINT), load_checked(full / CHECKPOINT)
    assert [e["loss"] for e in ca["log"]] == [e["loss"] for e in cb["log"]]  # same RNG streams, same losses


def test_evaluation_resumes_from_finished_networks(tmp_path, monkeypatch):
    """`evaluate --out X` records each finished network in X.progress; a rerun after a crash skips them and
    gives the same accuracies (each network's seed depends only on its index)."""
    import json

    import pydistill.evaluate as ev
    from pydistill.cli import main
    from pydistill.data import load_dataset

    ds = load_dataset("digits")
    syn = SyntheticSet(ds.x_train[:20].clone(), ds.y_train[:20].clone(), None, {"dataset": "digits"})
    syn.save(tmp_path / "s.safetensors")
    argv = [
        "evaluate",
        "--synthetic",
        str(tmp_path / "s.safetensors"),
        "--device",
        "cpu",
        "--no-progress",
        "--eval-models",
        "MLP",
        "--num-eval",
        "3",
        "--eval-epochs",
        "2",
        "--no-eval-dsa",
    ]
    assert main([*argv, "--out", str(tmp_path / "full.json")]) == 0
    full = json.loads((tmp_path / "full.json").read_text())

    real_train, calls = ev.train_model, []

    def crash_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_train(*a, **k)

    monkeypatch.setattr(ev, "train_model", crash_on_third)
    assert main([*argv, "--out", str(tmp_path / "part.json")]) == 130  # Ctrl-C: one line, exit 130
    assert len(list((tmp_path / "part.json.progress").glob("net_*.json"))) == 2
    calls.clear()
    monkeypatch.setattr(ev, "train_model", lambda *a, **k: (calls.append(1), real_train(*a, **k))[1])
    assert main([*argv, "--out", str(tmp_path / "part.json")]) == 0
    assert len(calls) == 1, "finished networks were retrained"
    assert json.loads((tmp_path / "part.json").read_text()) == full
    # a damaged record is recomputed, never trusted
    rec = next((tmp_path / "part.json.progress").glob("net_*.json"))
    rec.write_text("{not json")
    calls.clear()
    assert main([*argv, "--out", str(tmp_path / "part.json")]) == 0
    assert len(calls) == 1 and json.loads((tmp_path / "part.json").read_text()) == full
