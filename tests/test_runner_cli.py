"""Runner (checkpoint, exact resume, outputs) and the command line (pydistill.runner, pydistill.cli)."""

import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch

from pydistill.cli import main, make_config, parse_overrides
from pydistill.data import load_dataset
from pydistill.methods import METHODS, get_method
from pydistill.methods.base import Method
from pydistill.methods.random import RandomSubset
from pydistill.runner import run_distillation
from pydistill.synthetic import SyntheticSet

OUTPUTS = ("checkpoint.pt", "synthetic.safetensors", "grid.png", "curves.png", "metrics.json")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("digits").subset(3, seed=0, n_test_per_class=2)


@dataclass
class DummyConfig:
    iterations: int = 6
    lr: float = 0.1
    tags: tuple = ("a",)
    extra: dict = field(default_factory=dict)


class Dummy(Method):
    """Adam on images towards noisy targets; uses the method generator AND the global RNG."""

    Config = DummyConfig
    name = "dummy"
    crash_at = -1  # raise at this iteration (a simulated interruption); not part of the config

    def __init__(self, dataset, ipc, *, config=None, device="cpu", seed=0):
        super().__init__(dataset, ipc, config=config, device=device, seed=seed)
        k = dataset.num_classes
        self.images = torch.randn(k * ipc, dataset.channel, *dataset.im_size, generator=self.generator)
        self.images.requires_grad_(True)
        self.labels = torch.arange(k).repeat_interleave(ipc)
        self.opt = torch.optim.Adam([self.images], lr=self.config.lr)

    @property
    def num_iterations(self):
        return self.config.iterations

    def step(self, it):
        if it == self.crash_at:
            raise RuntimeError("simulated interruption")
        target = torch.randn(self.images.shape, generator=self.generator) + 0.1 * torch.randn(self.images.shape)
        loss = (self.images - target).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "it_sq": float(it * it)}

    def synthetic_set(self):
        return SyntheticSet(self.images.detach().clone(), self.labels.clone(), None, {"method": self.name})

    def state_dict(self):
        return {**super().state_dict(), "images": self.images.detach().clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        with torch.no_grad():
            self.images.copy_(sd["images"])
        self.opt.load_state_dict(sd["opt"])


def test_checkpoint_resume_is_exact(tiny, tmp_path):
    kw = dict(checkpoint_every=2, progress=False, final_eval=False)
    torch.manual_seed(123)
    ref = run_distillation(Dummy(tiny, 2, seed=1), tmp_path / "full", **kw)
    ref_set = SyntheticSet.load(tmp_path / "full" / "synthetic.safetensors")

    torch.manual_seed(123)
    crashing = Dummy(tiny, 2, seed=1)
    crashing.crash_at = 4
    with pytest.raises(RuntimeError, match="simulated"):
        run_distillation(crashing, tmp_path / "part", **kw)
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert ckpt["iteration"] == 4 and len(ckpt["log"]) == 4
    assert not (tmp_path / "part" / "synthetic.safetensors").exists()

    torch.manual_seed(999)  # a different global RNG state: the checkpoint's must be restored
    out = run_distillation(Dummy(tiny, 2, seed=1), tmp_path / "part", **kw)
    got = SyntheticSet.load(tmp_path / "part" / "synthetic.safetensors")
    assert torch.equal(got.images, ref_set.images)
    assert out["resumed_from_iteration"] == 4
    assert out["final_scalars"] == ref["final_scalars"]
    full_log = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["log"]
    part_log = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["log"]
    assert full_log == part_log and len(part_log) == 6
    # a finished run rerun in the same folder does no more iterations and rewrites the same outputs
    again = run_distillation(Dummy(tiny, 2, seed=1), tmp_path / "part", **kw)
    assert again["resumed_from_iteration"] == 6
    assert torch.equal(SyntheticSet.load(tmp_path / "part" / "synthetic.safetensors").images, ref_set.images)


def test_resume_with_other_config_is_an_error(tiny, tmp_path):
    run_distillation(Dummy(tiny, 2), tmp_path, checkpoint_every=3, progress=False, final_eval=False)
    with pytest.raises(ValueError, match="config.lr"):
        run_distillation(Dummy(tiny, 2, config=DummyConfig(lr=0.2)), tmp_path, progress=False, final_eval=False)
    with pytest.raises(ValueError, match="seed"):
        run_distillation(Dummy(tiny, 2, seed=7), tmp_path, progress=False, final_eval=False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        run_distillation(Dummy(tiny, 2), tmp_path, checkpoint_every=0)


class ExtendableDummy(Dummy):
    extendable = True


def test_extend_a_finished_run_equals_one_longer_run(tiny, tmp_path):
    """An extendable method resumes with a larger config.iterations: 4 then 6 iterations == 6 at once."""
    kw = dict(checkpoint_every=2, progress=False, final_eval=False)
    torch.manual_seed(5)
    ref = run_distillation(ExtendableDummy(tiny, 2, seed=1), tmp_path / "full", **kw)
    torch.manual_seed(5)
    run_distillation(ExtendableDummy(tiny, 2, seed=1, config=DummyConfig(iterations=4)), tmp_path / "ext", **kw)
    torch.manual_seed(77)
    out = run_distillation(ExtendableDummy(tiny, 2, seed=1), tmp_path / "ext", **kw)
    assert out["resumed_from_iteration"] == 4 and out["iterations"] == 6
    assert out["final_scalars"] == ref["final_scalars"]
    assert torch.equal(
        SyntheticSet.load(tmp_path / "ext" / "synthetic.safetensors").images,
        SyntheticSet.load(tmp_path / "full" / "synthetic.safetensors").images,
    )
    # fewer iterations than done, another field, or a method that is not extendable: still an error
    with pytest.raises(ValueError, match="config.iterations"):
        run_distillation(ExtendableDummy(tiny, 2, seed=1, config=DummyConfig(iterations=5)), tmp_path / "ext", **kw)
    with pytest.raises(ValueError, match="config.lr"):
        run_distillation(
            ExtendableDummy(tiny, 2, seed=1, config=DummyConfig(iterations=8, lr=0.3)), tmp_path / "ext", **kw
        )
    run_distillation(Dummy(tiny, 2, seed=1, config=DummyConfig(iterations=4)), tmp_path / "plain", **kw)
    with pytest.raises(ValueError, match="config.iterations"):
        run_distillation(Dummy(tiny, 2, seed=1), tmp_path / "plain", **kw)


def test_outputs_and_metrics(tiny, tmp_path):
    ev = dict(models=("ConvNetW32",), num_eval=2, epochs=2, dsa=False)
    m = run_distillation(
        Dummy(tiny, 1, config=DummyConfig(iterations=4)),
        tmp_path,
        checkpoint_every=10,
        eval_every=2,
        eval_kwargs=ev,
        progress=False,
    )
    for f in OUTPUTS:
        assert (tmp_path / f).stat().st_size > 0, f
    disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "test_acc_mean",
        "test_acc_std",
        "method",
        "dataset",
        "ipc",
        "iterations",
        "wall_time_s",
        "peak_memory_mb",
        "accuracies",
        "config",
    ):
        assert key in disk, key
    assert disk["method"] == "dummy" and disk["dataset"] == "digits" and disk["ipc"] == 1 and disk["iterations"] == 4
    assert disk["config"]["lr"] == 0.1 and disk["peak_memory_mb"] > 0
    assert len(disk["accuracies"]["ConvNetW32"]["accs"]) == 2
    assert disk["test_acc_mean"] == pytest.approx(m["accuracies"]["ConvNetW32"]["mean"])
    log = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["log"]
    assert [e["iteration"] for e in log if "eval_acc" in e] == [2]  # mid-run eval (the final one is not logged)
    syn = SyntheticSet.load(tmp_path / "synthetic.safetensors")
    assert syn.meta["dataset"] == "digits" and syn.meta["ipc"] == 1 and syn.meta["iterations"] == 4
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[1] >= 10 * 32  # one row per class, upscaled 8x8 cells


def test_random_subset_method(tiny):
    a = RandomSubset(tiny, 2, seed=3)
    s = a.synthetic_set()
    assert a.num_iterations == 0 and s.images.shape == (20, 1, 8, 8)
    assert torch.bincount(s.labels, minlength=10).tolist() == [2] * 10
    assert torch.equal(s.images, RandomSubset(tiny, 2, seed=3).synthetic_set().images)
    b = RandomSubset(tiny, 2, seed=4)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.synthetic_set().images, s.images)
    with pytest.raises(ValueError, match="ipc"):
        RandomSubset(tiny, 0)


def test_registry():
    assert set(METHODS) == {"random", "dd", "dc", "dsa", "dm", "mtt", "ssdkd", "mgd3", "mgd3-unguided"}
    assert get_method("random") is RandomSubset
    with pytest.raises(ValueError, match="unknown method"):
        get_method("kip")


def test_registry_missing_module(monkeypatch):
    monkeypatch.setitem(METHODS, "ghost", "not_written_yet:Ghost")
    with pytest.raises(ImportError, match="not part of this install"):
        get_method("ghost")


def test_parse_overrides():
    @dataclass
    class C:
        a: int = 1
        b: float = 0.5
        c: bool = False
        d: str | None = None
        e: int | None = None
        f: tuple = ()
        g: dict = field(default_factory=dict)

    got = parse_overrides(C, ["a=3", "b=1e-3", "c=true", "d=hello", "e=none", "f=1,2", 'g={"width": 64}'])
    assert got == {"a": 3, "b": 1e-3, "c": True, "d": "hello", "e": None, "f": (1, 2), "g": {"width": 64}}
    assert parse_overrides(C, ["e=7"]) == {"e": 7}
    with pytest.raises(ValueError, match="no field 'zz'"):
        parse_overrides(C, ["zz=1"])
    with pytest.raises(ValueError, match="expected an integer"):
        parse_overrides(C, ["a=1.5"])
    with pytest.raises(ValueError, match="boolean"):
        parse_overrides(C, ["c=maybe"])
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(C, ["a"])


def test_make_config():
    cfg = make_config(Dummy, "digits", 2, iterations=9, overrides={"lr": 0.3})
    assert cfg.iterations == 9 and cfg.lr == 0.3
    with pytest.raises(ValueError, match="--teacher"):
        make_config(Dummy, "digits", 2, extra={"teacher": "t.pt"})


def test_cli_distill_random_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "distill",
            "--method",
            "random",
            "--dataset",
            "digits",
            "--ipc",
            "2",
            "--out",
            str(out),
            "--eval-models",
            "ConvNetW32",
            "--num-eval",
            "1",
            "--eval-epochs",
            "2",
            "--no-eval-dsa",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    for f in OUTPUTS:
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "random" and metrics["ipc"] == 2 and metrics["iterations"] == 0
    assert 0.0 <= metrics["test_acc_mean"] <= 1.0
    assert "ConvNetW32: test accuracy" in capsys.readouterr().out
    # evaluate subcommand on the written set; the dataset comes from the file's metadata
    rc = main(
        [
            "evaluate",
            "--synthetic",
            str(out / "synthetic.safetensors"),
            "--eval-models",
            "MLP",
            "--num-eval",
            "1",
            "--eval-epochs",
            "1",
            "--no-eval-dsa",
            "--no-progress",
            "--out",
            str(tmp_path / "acc.json"),
        ]
    )
    assert rc == 0 and "MLP" in json.loads((tmp_path / "acc.json").read_text())
    # user errors are reported, not raised
    assert main(["distill", "--method", "random", "--out", str(tmp_path / "x"), "--set", "nope=1"]) == 2
    assert "no field 'nope'" in capsys.readouterr().err
    assert (
        main(
            [
                "distill",
                "--method",
                "random",
                "--dataset",
                "cifar10",
                "--data-root",
                str(tmp_path),
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err


def test_python_dash_m_help():
    r = subprocess.run(
        [sys.executable, "-m", "pydistill", "distill", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "--method" in r.stdout and "--set" in r.stdout
