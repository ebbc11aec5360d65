"""``--deterministic``: deterministic algorithms, fixed threads, cuDNN flags; two runs give identical outputs."""

import json
import os

import pytest
import torch

from pydistill.cli import main
from pydistill.runner import CHECKPOINT
from pydistill.synthetic import SyntheticSet
from pydistill.utils import enable_determinism, load_checked


@pytest.fixture(autouse=True)
def _restore_global_flags():
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_num_threads(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.set_num_threads(saved[2])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[3], saved[4]
    if saved[5] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[5]


def test_enable_determinism_sets_the_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    enable_determinism(1)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 1
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with pytest.raises(ValueError, match="num_threads"):
        enable_determinism(0)


def _distill(out, *flags, pre=()):
    argv = [
        *pre,
        "distill",
        "--method",
        "dsa",
        "--dataset",
        "digits",
        "--ipc",
        "1",
        "--iterations",
        "3",
        "--no-eval",
        "--no-progress",
        "--device",
        "cpu",
        "--seed",
        "5",
        "--set",
        "batch_real=8",
        "--set",
        'model_kwargs={"width": 8}',
        "--out",
        str(out),
        *flags,
    ]
    assert main(argv) == 0
    syn = SyntheticSet.load(out / "synthetic.safetensors")
    return syn, [e["loss"] for e in load_checked(out / CHECKPOINT)["log"]]


def test_deterministic_flag_gives_identical_runs(tmp_path):
    torch.use_deterministic_algorithms(False)
    a, la = _distill(tmp_path / "a", "--deterministic")
    assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    torch.use_deterministic_algorithms(False)
    b, lb = _distill(tmp_path / "b", pre=("--deterministic",))  # the flag also works before the command
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.equal(a.images, b.images) and la == lb
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["iterations"] == 3


def test_bad_thread_count_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYDISTILL_NUM_THREADS", "many")
    rc = main(["baseline", "--kind", "full", "--dataset", "digits", "--device", "cpu", "--deterministic"])
    assert rc == 2 and "PYDISTILL_NUM_THREADS" in capsys.readouterr().err


def test_evaluation_is_deterministic_given_the_seed():
    from pydistill.data import load_dataset
    from pydistill.evaluate import evaluate

    ds = load_dataset("digits").subset(4, seed=0, n_test_per_class=3)
    syn = SyntheticSet(ds.x_train[::4].clone(), ds.y_train[::4].clone(), None, {})
    kw = dict(models=("MLP",), num_eval=2, epochs=2, progress=False, seed=1, model_kwargs={"width": 8})
    r1, r2 = evaluate(syn, ds, **kw), evaluate(syn, ds, **kw)
    assert r1 == r2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU check (run on a CUDA machine)")
def test_deterministic_gpu_run(tmp_path):
    """On a GPU the DC path (no Triton atomics in the matching loss) repeats exactly under --deterministic."""
    argv = [
        "distill",
        "--method",
        "dc",
        "--dataset",
        "digits",
        "--ipc",
        "1",
        "--iterations",
        "2",
        "--no-eval",
        "--no-progress",
        "--device",
        "cuda",
        "--set",
        "batch_real=8",
        "--deterministic",
    ]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    a = SyntheticSet.load(tmp_path / "a" / "synthetic.safetensors")
    b = SyntheticSet.load(tmp_path / "b" / "synthetic.safetensors")
    assert torch.equal(a.images, b.images)
