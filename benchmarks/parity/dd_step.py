"""Parity of one DD step with the official SsnL/dataset-distillation ``train_distilled_image.Trainer`` (random init).

The official ``Trainer`` is importable; its ``forward`` (the unroll with per-step lrs folded into the
gradient), ``backward`` (the hand-written reverse pass through the steps) and ``accumulate_grad`` run
unchanged. ``Trainer.train`` is a loop over a data loader with checkpointing and evaluation around each
iteration, so its body for one iteration is followed here (train_distilled_image.py, ``train``:
``scheduler.step()`` at it 0, ``optimizer.zero_grad()``, ``get_steps()``, per model ``model.reset(state)``
(``--train_nets_type unknown_init``, the default), ``forward``, ``backward``, then ``accumulate_grad``,
division by ``sample_n_nets`` (1) and ``optimizer.step()``). The official network is its
``networks.networks.LeNet`` (ReparamModule, flat parameters), initialised by its own ``reset`` (Xavier, gain 1).

One run-time patch for today's PyTorch: ``Optimizer.zero_grad()`` sets gradients to None since PyTorch 2.0,
and the official ``accumulate_grad`` adds into ``.grad`` in place, so the official side calls
``zero_grad(set_to_none=False)`` (the old default). Nothing else is changed.

Identical state: the official initial weights (one ``reset`` draw) given to pydistill in place of its Xavier
draw, the same distilled images (pydistill's randn, laid out as the official per-step tensors: official step s,
class c, position i is pydistill image c * ipc + s + i * distill_steps), the same raw lrs (softplus^-1 of lr0)
and the same real batch (pydistill's draw). pydistill's side is ``DD.step`` with ``init_mode="random"``.
float64 by default. Then one step of each is timed in float32, interleaved, one thread.

    python benchmarks/parity/dd_step.py --official /path/to/dataset-distillation [--ipc 10 --distill-steps 10]
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import git_commit, import_official, max_abs, official_path, time_against_official, write_result  # noqa: E402


def official_state(ds, *, ippc, distill_steps, distill_epochs, distill_lr, lr, batch_size):
    """The ``state`` fields the official Trainer, LeNet and basics read (base_options.py defaults otherwise)."""
    return types.SimpleNamespace(
        num_classes=ds.num_classes,
        nc=ds.channel,
        input_size=int(ds.im_size[0]),
        distilled_images_per_class_per_step=ippc,
        distill_steps=distill_steps,
        distill_epochs=distill_epochs,
        distill_lr=distill_lr,
        lr=lr,
        decay_epochs=40,
        decay_factor=0.5,
        device=torch.device("cpu"),
        distributed=False,
        dropout=False,
        init="xavier",
        init_param=1.0,
        mode="distill_basic",
        train_nets_type="unknown_init",
        batch_size=batch_size,
        sample_n_nets=1,
        local_sample_n_nets=1,
        local_n_nets=1,
    )


def official_step(tdi, trainer, model, rdata, rlabel, init_seed):
    """One iteration of the official ``Trainer.train`` body (one model, unknown_init) -> the loss."""
    state = trainer.state
    trainer.scheduler.step()  # it == 0
    trainer.optimizer.zero_grad(set_to_none=False)  # the PyTorch < 2.0 default the code relies on
    steps = trainer.get_steps()
    grad_infos = []
    torch.manual_seed(init_seed)
    model.reset(state)
    loss, saved = trainer.forward(model, rdata, rlabel, steps)
    grad_infos.append(trainer.backward(model, rdata, rlabel, steps, saved))
    trainer.accumulate_grad(grad_infos)
    for p in trainer.params:
        p.grad.div_(state.sample_n_nets)
    trainer.optimizer.step()
    return float(loss.detach())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", help="checkout of SsnL/dataset-distillation (or $PYDISTILL_OFFICIAL_DD)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--ipc", type=int, default=10, help="images per class in all (distill_steps x per step)")
    p.add_argument("--distill-steps", type=int, default=10, help="base_options.py default")
    p.add_argument("--distill-epochs", type=int, default=3, help="base_options.py default")
    p.add_argument("--lr0", type=float, default=0.02, help="--distill_lr, base_options.py default")
    p.add_argument("--lr-outer", type=float, default=0.01, help="--lr, base_options.py default")
    p.add_argument("--batch-real", type=int, default=1024, help="--batch_size, base_options.py default")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--time-reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--name", default=None)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    if a.ipc % a.distill_steps:
        raise SystemExit(f"--ipc ({a.ipc}) must be a multiple of --distill-steps ({a.distill_steps})")
    torch.set_num_threads(1)
    import pydistill.methods.dd as ddmod
    from pydistill.data import load_dataset
    from pydistill.methods import get_method

    dtype = getattr(torch, a.dtype)
    path = official_path("dd", a.official)
    tdi, nets = import_official(path, "train_distilled_image", "networks.networks")
    ds = load_dataset(a.dataset)
    nc, steps = ds.num_classes, a.distill_steps
    ippc = a.ipc // steps
    cfg = dict(
        model="LeNet",
        distill_steps=steps,
        distill_epochs=a.distill_epochs,
        lr0=a.lr0,
        lr_outer=a.lr_outer,
        batch_real=a.batch_real,
        init_mode="random",
    )
    m = get_method("dd")(ds, ipc=a.ipc, device="cpu", seed=0, config=cfg)
    state = official_state(
        ds,
        ippc=ippc,
        distill_steps=steps,
        distill_epochs=a.distill_epochs,
        distill_lr=a.lr0,
        lr=a.lr_outer,
        batch_size=a.batch_real,
    )
    # layout: official step s, class c, position i  <->  pydistill image c * ipc + s + i * steps
    layout = [torch.tensor([c * a.ipc + s + i * steps for c in range(nc) for i in range(ippc)]) for s in range(steps)]
    assert torch.equal(torch.sort(torch.cat(layout)).values, torch.arange(nc * a.ipc))
    assert all(torch.equal(torch.sort(idx).values, torch.sort(layout[j]).values) for j, idx in enumerate(m.chunks))
    images0 = m.images.detach().clone().to(dtype)
    raw0 = m.raw_lr.detach().clone().to(dtype)
    # the real batch pydistill's step will draw (its first use of the generator in step)
    g = torch.Generator().set_state(m.generator.get_state())
    ridx = torch.randperm(ds.x_train.shape[0], generator=g)[: a.batch_real]
    rdata, rlabel = ds.x_train[ridx].to(dtype), ds.y_train[ridx]

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the official tensors (randn data, raw lrs, network) in the working dtype
    try:
        trainer = tdi.Trainer(state, [])
        model = nets.LeNet(state)
        with torch.no_grad():
            for s in range(steps):
                trainer.data[s].copy_(images0[layout[s]])
            trainer.raw_distill_lrs.copy_(raw0.view(-1, 1))
        torch.manual_seed(7)
        w0 = model.reset(state, inplace=False).detach().clone()  # the official Xavier draw (seed 7)
        ref_loss = official_step(tdi, trainer, model, rdata, rlabel, init_seed=7)
    finally:
        torch.set_default_dtype(prev)
    ref_images = torch.empty_like(images0)
    for s in range(steps):
        ref_images[layout[s]] = trainer.data[s].detach()
    ref_lrs = trainer.raw_distill_lrs.detach().view(-1)
    # Adam's first step is about lr_outer * sign(gradient), so the gradients are compared too
    ref_gimg = torch.empty_like(images0)
    for s in range(steps):
        ref_gimg[layout[s]] = trainer.data[s].grad.detach()
    ref_glr = trainer.raw_distill_lrs.grad.detach().view(-1)

    # the flat layouts agree: pydistill's LeNet with the official flat vector computes the official function
    from pydistill.functional import functional_forward

    with torch.no_grad():
        out_off = model.forward_with_param(rdata[:8], w0)
        out_ours = functional_forward(m.net.to(dtype), w0, rdata[:8])
    assert max_abs(out_off, out_ours) < 1e-6, "LeNet parameter layouts differ"

    m.images = images0.clone().requires_grad_(True)
    m.raw_lr = raw0.clone().requires_grad_(True)
    m.opt = torch.optim.Adam([m.images, m.raw_lr], lr=a.lr_outer, betas=(0.5, 0.999))
    x_train32 = m.dataset.x_train
    m.dataset.x_train = x_train32.to(dtype)  # the real images in the working dtype (the same values)
    orig = ddmod.xavier_flat
    ddmod.xavier_flat = lambda net, generator: w0.clone()
    try:
        stats = m.step(0)
    finally:
        ddmod.xavier_flat = orig
        m.dataset.x_train = x_train32
    err_img, upd_img = max_abs(m.images, ref_images), max_abs(ref_images, images0)
    err_lr, upd_lr = max_abs(m.raw_lr, ref_lrs), max_abs(ref_lrs, raw0)
    import torch.nn.functional as F

    err_eta = max_abs(F.softplus(m.raw_lr), F.softplus(ref_lrs))
    err_gimg, err_glr = max_abs(m.images.grad, ref_gimg), max_abs(m.raw_lr.grad, ref_glr)
    scale_gimg, scale_glr = float(ref_gimg.abs().max()), float(ref_glr.abs().max())
    print(
        f"DD {a.dataset} IPC {a.ipc} ({steps} steps x {a.distill_epochs} epochs) {a.dtype}: images max|ours - "
        f"official| = {err_img:.3e} (update {upd_img:.3e}); raw lrs {err_lr:.3e} (update {upd_lr:.3e}), "
        f"lrs {err_eta:.3e}; loss {ref_loss:.6f} vs {stats['loss']:.6f}\n  gradients: images {err_gimg:.3e} "
        f"(max |grad| {scale_gimg:.3e}), raw lrs {err_glr:.3e} (max |grad| {scale_glr:.3e})"
    )
    record = {
        "method": "dd",
        "dataset": a.dataset,
        "ipc": a.ipc,
        "distill_steps": steps,
        "distill_epochs": a.distill_epochs,
        "images_per_class_per_step": ippc,
        "lr0": a.lr0,
        "lr_outer": a.lr_outer,
        "batch_real": a.batch_real,
        "init_mode": "random (official unknown_init; the same Xavier draw on both sides)",
        "dtype": a.dtype,
        "official_patch": "optimizer.zero_grad(set_to_none=False) (PyTorch >= 2.0 sets grads to None)",
        "loss_official": ref_loss,
        "loss_pydistill": stats["loss"],
        "max_abs_err_images": err_img,
        "max_abs_update_images": upd_img,
        "max_abs_err_raw_lrs": err_lr,
        "max_abs_update_raw_lrs": upd_lr,
        "max_abs_err_lrs": err_eta,
        "max_abs_err_grad_images": err_gimg,
        "max_abs_grad_images": scale_gimg,
        "max_abs_err_grad_raw_lrs": err_glr,
        "max_abs_grad_raw_lrs": scale_glr,
        "official_commit": git_commit(path),
        "command": "python benchmarks/parity/dd_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    md = (
        "| setting | dtype | loss (official / ours) | max abs err images (update) | max abs err raw lrs (update) "
        "| max abs err dL/dimages (max abs) | max abs err dL/draw lrs (max abs) |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| DD {a.dataset} IPC {a.ipc} = {steps} steps x {ippc}/class, {a.distill_epochs} epochs, LeNet, random "
        f"init, batch_real {a.batch_real} | {a.dtype} | {ref_loss:.6g} / {stats['loss']:.6g} | "
        f"{err_img:.2e} ({upd_img:.2e}) | {err_lr:.2e} ({upd_lr:.2e}) | {err_gimg:.2e} ({scale_gimg:.2e}) | "
        f"{err_glr:.2e} ({scale_glr:.2e}) |\n"
        "\nAdam's first step moves every element by about lr_outer * sign(gradient), hence the gradient columns.\n"
    )
    if a.time_reps > 0:
        ours = get_method("dd")(ds, ipc=a.ipc, device="cpu", seed=0, config=cfg)
        trainer32 = tdi.Trainer(state, [])
        model32 = nets.LeNet(state)

        def official_it(r):
            gi = torch.randperm(ds.x_train.shape[0])[: a.batch_real]
            official_step(tdi, trainer32, model32, ds.x_train[gi], ds.y_train[gi], init_seed=100 + r)

        fields, table = time_against_official(
            official_it,
            lambda r: ours.step(max(r, 0)),
            a.time_reps,
            a.warmup,
            f"DD {a.dataset} IPC {a.ipc}, one step, fp32",
        )
        record.update(fields)
        md += table
    if not a.no_write:
        write_result(a.name or f"dd-{a.dataset}-ipc{a.ipc}-{a.dtype}", record, md)
    return record


if __name__ == "__main__":
    main()
