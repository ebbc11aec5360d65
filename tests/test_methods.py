"""DD, DC, DSA, DM and MTT: end to end on tiny digits budgets, exact resume, MTT's exact recompute unroll,
DD's unroll gradient against finite differences, expert files and their resume."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from pydistill.data import load_dataset
from pydistill.functional import flat_params, functional_forward, num_params, unflatten_params, xavier_flat
from pydistill.models import get_network

TINY = {"width": 8, "depth": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").subset(24, seed=1, n_test_per_class=10)


@pytest.fixture(scope="module")
def experts(digits, tmp_path_factory):
    from pydistill.methods.mtt import train_experts

    out = tmp_path_factory.mktemp("experts")
    train_experts(
        digits,
        out,
        num_experts=2,
        epochs=3,
        lr=0.05,
        batch_size=64,
        dsa=True,
        model="ConvNet",
        model_kwargs=TINY,
        seed=0,
        log=None,
    )
    return out


def _config(name, digits, experts=None):
    from pydistill.methods import get_method

    cls = get_method(name)
    cfg = cls.Config.for_dataset("digits", 2)
    if name in ("dc", "dsa"):
        cfg = dataclasses.replace(cfg, model_kwargs=TINY, batch_real=16, outer_loop=2, inner_loop=1, iterations=6)
    elif name == "dm":
        cfg = dataclasses.replace(cfg, model_kwargs=TINY, batch_real=16, iterations=6)
    elif name == "dd":
        cfg = dataclasses.replace(
            cfg,
            model="ConvNet",
            model_kwargs=TINY,
            distill_steps=2,
            distill_epochs=2,
            batch_real=32,
            iterations=6,
            init_mode="random",
        )
    elif name == "mtt":
        cfg = dataclasses.replace(
            cfg,
            buffers=str(experts),
            syn_steps=3,
            expert_epochs=1,
            max_start_epoch=2,
            iterations=6,
            lr_img=10.0,
            model_kwargs=None,
        )
    return cls, cfg


METHODS = ["dd", "dc", "dsa", "dm", "mtt"]


# ------------------------------------------------------------------------------------------------ functional
def test_functional_forward_matches_module():
    net = get_network("ConvNet", 1, 3, (8, 8), **TINY)
    x = torch.randn(5, 1, 8, 8)
    w = flat_params(net)
    assert w.shape == (num_params(net),)
    torch.testing.assert_close(functional_forward(net, w, x), net(x))
    w2 = (w + 0.1).requires_grad_(True)
    functional_forward(net, w2, x).sum().backward()
    assert w2.grad is not None and w2.grad.abs().sum() > 0
    assert unflatten_params(net, w2)["classifier.weight"].shape == net.classifier.weight.shape
    with pytest.raises(ValueError, match="flat must have"):
        functional_forward(net, w[:-1], x)
    g = torch.Generator().manual_seed(3)
    a, b = xavier_flat(net, g), xavier_flat(net, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_loops_for_ipc():
    from pydistill.methods.dc import loops_for_ipc

    assert loops_for_ipc(1) == (1, 1) and loops_for_ipc(10) == (10, 50) and loops_for_ipc(50) == (50, 10)
    assert loops_for_ipc(15) == (15, 38)  # inner interpolated between 50 (ipc 10) and 25 (ipc 20)
    assert loops_for_ipc(100) == (50, 10)
    with pytest.raises(ValueError, match="ipc"):
        loops_for_ipc(0)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("name", METHODS)
def test_method_changes_images_and_state_roundtrip(name, digits, experts):
    cls, cfg = _config(name, digits, experts)
    m = cls(digits, 2, config=cfg, seed=0)
    before = m.synthetic_set()
    assert before.images.shape == (20, 1, 8, 8) and before.labels.tolist() == sorted(before.labels.tolist())
    logs = [m.step(it) for it in range(2)]
    assert all(torch.isfinite(torch.tensor(lg["loss"])) for lg in logs)
    after = m.synthetic_set()
    assert not torch.equal(before.images, after.images)
    if name == "dd":
        assert after.lr.shape == (4,) and bool((after.lr > 0).all())
        assert after.meta["train_schedule"] == "dd_unrolled"
    if name == "mtt":
        assert after.lr.dim() == 0 and float(after.lr) > 0


@pytest.mark.parametrize("name", METHODS)
def test_resume_is_exact(name, digits, experts):
    cls, cfg = _config(name, digits, experts)
    full = cls(digits, 2, config=cfg, seed=5)
    for it in range(4):
        full.step(it)
    first = cls(digits, 2, config=cfg, seed=5)
    for it in range(2):
        first.step(it)
    state = first.state_dict()
    resumed = cls(digits, 2, config=cfg, seed=99)  # a different seed: everything must come from the state
    resumed.load_state_dict(state)
    for it in range(2, 4):
        resumed.step(it)
    a, b = full.synthetic_set(), resumed.synthetic_set()
    assert torch.equal(a.images, b.images)
    if a.lr is not None:
        assert torch.equal(a.lr, b.lr)


def test_dc_loss_decreases_on_fixed_network(digits):
    """With the network fixed (one outer loop, same seed each step), matching steps reduce the matching loss."""
    from pydistill.methods.dc import DC

    cls, cfg = _config("dc", digits)
    cfg = dataclasses.replace(cfg, outer_loop=1, batch_real=24, lr_img=0.1)
    m = DC(digits, 2, config=cfg, seed=0)
    losses = []
    for it in range(5):
        m.generator.manual_seed(7)  # same network and real batches every step
        losses.append(m.step(it)["loss"])
    assert losses[-1] < losses[0]


def test_dm_loss_decreases_on_fixed_network(digits):
    from pydistill.methods.dm import DM

    _, cfg = _config("dm", digits)
    cfg = dataclasses.replace(cfg, dsa=False)
    m = DM(digits, 2, config=cfg, seed=0)
    losses = []
    for it in range(5):
        m.generator.manual_seed(7)
        losses.append(m.step(it)["loss"])
    assert losses[-1] < 0.9 * losses[0]


def test_bad_configs(digits, experts):
    from pydistill.methods.dc import DC
    from pydistill.methods.dd import DD
    from pydistill.methods.mtt import MTT

    _, cfg = _config("dc", digits)
    with pytest.raises(ValueError, match="config.init"):
        DC(digits, 1, config=dataclasses.replace(cfg, init="zeros"))
    with pytest.raises(ValueError, match="config.lr_img"):
        DC(digits, 1, config=dataclasses.replace(cfg, lr_img=0.0))
    _, cfg = _config("dd", digits)
    with pytest.raises(ValueError, match="config.init_mode"):
        DD(digits, 1, config=dataclasses.replace(cfg, init_mode="other"))
    _, cfg = _config("mtt", digits, experts)
    with pytest.raises(ValueError, match="config.buffers"):
        MTT(digits, 1, config=dataclasses.replace(cfg, buffers=None))
    with pytest.raises(ValueError, match="max_start_epoch"):
        MTT(digits, 1, config=dataclasses.replace(cfg, max_start_epoch=3, expert_epochs=2))
    with pytest.raises(ValueError, match="config.unroll"):
        MTT(digits, 1, config=dataclasses.replace(cfg, unroll="fast"))
    with pytest.raises(ValueError, match="parameters"):
        MTT(digits, 1, config=dataclasses.replace(cfg, model_kwargs={"width": 4, "depth": 2}))


# ------------------------------------------------------------------------------------------------ DD
def test_dd_lr_init_and_positivity(digits):
    from pydistill.methods.dd import DD

    _, cfg = _config("dd", digits)
    m = DD(digits, 1, config=dataclasses.replace(cfg, lr0=0.02, lr_outer=5.0))
    torch.testing.assert_close(m.lrs, torch.full((4,), 0.02))
    for it in range(3):
        m.step(it)
    assert bool((m.lrs > 0).all()) and not torch.equal(m.lrs, torch.full((4,), 0.02))


def test_dd_unroll_gradient_matches_finite_differences():
    from pydistill.methods.dd import _chunks, _unroll

    torch.manual_seed(0)
    net = get_network("MLP", 1, 2, (2, 2), width=3).double()
    for p in net.parameters():
        p.requires_grad_(False)
    w0 = xavier_flat(net, torch.Generator().manual_seed(0)).double()
    labels = torch.tensor([0, 0, 1, 1])
    chunks = _chunks(2, 2, 2, "cpu")
    x_real, y_real = torch.randn(6, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1, 0])

    def outer_loss(images, raw):
        w = _unroll(
            net,
            w0.clone().requires_grad_(True),
            images,
            labels,
            torch.nn.functional.softplus(raw),
            chunks,
            2,
            create_graph=True,
        )
        return torch.nn.functional.cross_entropy(functional_forward(net, w, x_real), y_real)

    images = torch.randn(4, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    raw = torch.tensor([0.3, -0.5, 0.1, 0.8], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(outer_loss, (images, raw), eps=1e-6, atol=1e-6)


def test_evaluate_dd(digits):
    from pydistill.methods.dd import DD, evaluate_dd

    _, cfg = _config("dd", digits)
    m = DD(digits, 1, config=dataclasses.replace(cfg, init_mode="fixed"))
    m.step(0)
    res = evaluate_dd(m.synthetic_set(), digits, num_models=2)
    r = res["ConvNet"]
    assert len(r["accs"]) == 2 and 0 <= r["mean"] <= 1 and r["std"] == 0  # fixed init: identical runs
    with pytest.raises(ValueError, match="train_schedule"):
        from pydistill.synthetic import SyntheticSet

        evaluate_dd(SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), None, {}), digits)


def test_evaluate_dd_random_is_dd_schedule_on_real_images(digits):
    """The DD baseline equals evaluate_dd on the same random real images with a constant lr, keeps the best lr."""
    from pydistill.evaluate import random_subset_indices
    from pydistill.methods.dd import DD, evaluate_dd, evaluate_dd_random
    from pydistill.synthetic import SyntheticSet

    _, cfg = _config("dd", digits)
    syn = DD(digits, 2, config=dataclasses.replace(cfg, init_mode="fixed")).synthetic_set()
    T = syn.lr.numel()
    one = evaluate_dd_random(syn, digits, num_models=2, lrs=(0.05,), seed=3)["ConvNet"]
    accs = []
    for m in range(2):  # the same draw as evaluate_dd_random: ipc images per class, class-major
        sel = random_subset_indices(digits, 2, 3, m)
        real = SyntheticSet(digits.x_train[sel], digits.y_train[sel], torch.full((T,), 0.05), syn.meta)
        accs += evaluate_dd(real, digits, num_models=1)["ConvNet"]["accs"]
    assert one["accs"] == accs and one["lr"] == 0.05
    grid = evaluate_dd_random(syn, digits, num_models=2, lrs=(1e-6, 0.05), seed=3)["ConvNet"]
    tiny = evaluate_dd_random(syn, digits, num_models=2, lrs=(1e-6,), seed=3)["ConvNet"]
    assert grid["mean"] == max(one["mean"], tiny["mean"])
    with pytest.raises(ValueError, match="lrs"):
        evaluate_dd_random(syn, digits, lrs=(0.1, -1.0))
    with pytest.raises(ValueError, match="train_schedule"):
        evaluate_dd_random(SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), None, {}), digits)


# ------------------------------------------------------------------------------------------------ MTT
@pytest.mark.parametrize("dsa", [False, True])
def test_mtt_recompute_equals_plain(dsa):
    from pydistill.methods.mtt import unroll_student
    from pydistill.ops.trajectory_loss import trajectory_loss

    torch.manual_seed(0)
    net = get_network("ConvNet", 1, 3, (8, 8), width=4, depth=2).double()
    for p in net.parameters():
        p.requires_grad_(False)
    w0 = flat_params(net)
    target = w0 + 0.01 * torch.randn_like(w0)
    images = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    g = torch.Generator().manual_seed(1)
    idx = [torch.randperm(7, generator=g)[:4] for _ in range(5)]
    strategy, aug = None, None
    if dsa:
        from pydistill.ops.diff_augment import diff_augment

        strategy = "color_crop_cutout_scale_rotate"
        aug = [diff_augment(images[i], strategy, per_sample=True, generator=g, return_params=True)[1] for i in idx]
    grads = {}
    for mode in ("plain", "recompute"):
        x = images.clone().requires_grad_(True)
        lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        loss = trajectory_loss(
            unroll_student(net, x, labels, lr, w0, idx, strategy=strategy, aug_params=aug, unroll=mode), w0, target
        )
        loss.backward()
        grads[mode] = (loss.detach(), x.grad, lr.grad)
    for a, b in zip(grads["plain"], grads["recompute"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert grads["plain"][1].abs().sum() > 0


def test_mtt_recompute_method_matches_plain(digits, experts):
    from pydistill.methods.mtt import MTT

    _, cfg = _config("mtt", digits, experts)
    a = MTT(digits, 2, config=dataclasses.replace(cfg, unroll="plain"), seed=3)
    b = MTT(digits, 2, config=dataclasses.replace(cfg, unroll="recompute"), seed=3)
    for it in range(2):
        la, lb = a.step(it), b.step(it)
        assert la["loss"] == pytest.approx(lb["loss"], rel=1e-5)
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)
    assert a.lr == pytest.approx(b.lr, rel=1e-5)


def test_experts_files_and_resume(digits, tmp_path):
    from safetensors import safe_open

    from pydistill.methods.mtt import ExpertBuffer, train_experts

    kw = dict(epochs=2, lr=0.05, batch_size=128, dsa=False, model="ConvNet", model_kwargs=TINY, seed=0, log=None)
    paths = train_experts(digits, tmp_path, num_experts=2, **kw)
    net = get_network("ConvNet", 1, 10, (8, 8), **TINY)
    with safe_open(str(paths[0]), framework="pt") as f:
        traj = f.get_tensor("trajectory")
        meta = f.metadata()
    assert traj.shape == (3, num_params(net)) and traj.dtype == torch.float32
    assert meta["epochs"] == "2" and meta["model"] == "ConvNet"
    assert not torch.equal(traj[0], traj[1])
    mtimes = [os.stat(p).st_mtime_ns for p in paths]
    # an interrupted third expert: a truncated file and a stray temporary
    third = tmp_path / "expert_00002.safetensors"
    third.write_bytes(paths[0].read_bytes()[:100])
    (tmp_path / ".expert_00002.safetensors.x.tmp").write_bytes(b"junk")
    paths3 = train_experts(digits, tmp_path, num_experts=3, **kw)
    assert [os.stat(p).st_mtime_ns for p in paths3[:2]] == mtimes  # complete experts skipped
    buf = ExpertBuffer(tmp_path)
    assert len(buf) == 3 and buf.epochs == 2 and buf.lr == 0.05
    # experts are reproducible from (seed, index): a fresh directory gives the same first expert
    again = train_experts(digits, tmp_path / "again", num_experts=1, **kw)
    with safe_open(str(again[0]), framework="pt") as f:
        torch.testing.assert_close(f.get_tensor("trajectory"), traj)
    s0, s2 = buf.snapshots(0, [0, 2], "cpu")
    torch.testing.assert_close(s0, traj[0])
    torch.testing.assert_close(s2, traj[2])
    bf = train_experts(digits, tmp_path / "bf16", num_experts=1, dtype="bfloat16", **kw)
    with safe_open(str(bf[0]), framework="pt") as f:
        assert f.get_tensor("trajectory").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        train_experts(digits, tmp_path, num_experts=1, dtype="float16", **kw)


def test_experts_cli(tmp_path):
    import argparse

    from pydistill.methods.mtt import register_cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    register_cli(sub)
    args = parser.parse_args(
        [
            "experts",
            "--dataset",
            "digits",
            "--out",
            str(tmp_path),
            "--num-experts",
            "1",
            "--epochs",
            "1",
            "--width",
            "4",
            "--depth",
            "1",
            "--no-dsa",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    assert (tmp_path / "expert_00000.safetensors").is_file()


@pytest.mark.parametrize("name", ["dd", "dsa"])
def test_outputs_through_runner(name, digits, tmp_path):
    import json

    from pydistill.runner import run_distillation
    from pydistill.synthetic import SyntheticSet

    cls, cfg = _config(name, digits)
    cfg = dataclasses.replace(cfg, iterations=2)
    m = cls(digits, 1, config=cfg, seed=0)
    metrics = run_distillation(m, tmp_path, checkpoint_every=1, progress=False, final_eval=False)
    assert metrics["iterations"] == 2 and len(metrics["final_scalars"]) > 0
    syn = SyntheticSet.load(tmp_path / "synthetic.safetensors")
    torch.testing.assert_close(syn.images, m.synthetic_set().images)
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == name
    if name == "dd":
        assert syn.meta["train_schedule"] == "dd_unrolled" and syn.lr.shape == (4,)
    # a rerun resumes from the final checkpoint: no further steps, same set
    again = run_distillation(cls(digits, 1, config=cfg, seed=0), tmp_path, progress=False, final_eval=False)
    assert again["resumed_from_iteration"] == 2
