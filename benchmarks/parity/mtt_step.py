"""Parity of one MTT iteration with the official GeorgeCazenavette/mtt-distillation ``distill.py`` loop.

``distill.py`` is a script (its loop body is not a function), so the official side here follows its inner loop
statement by statement (distill.py lines ~294-396 at the recorded commit) using only the official helper
modules imported from the checkout: ``utils.get_network`` (the student ConvNet), ``utils.DiffAugment`` and
``reparam_module.ReparamModule`` (flat-parameter forward ``student_net(x, flat_param=w)``). Taken from the
script and re-typed here: the student unroll ``w_{n+1} = w_n - syn_lr * grad`` with ``create_graph=True``,
``param_loss = mse_loss(w_N, target, sum) / num_params``, ``param_dist = mse_loss(start, target, sum) /
num_params``, ``grand_loss = param_loss / param_dist``, backward, ``SGD(momentum=0.5)`` steps on the images
(lr_img) and on ``syn_lr`` itself (lr_lr). The minibatch order is the script's: ``torch.randperm`` split into
``batch_syn`` chunks, taken with ``pop()`` (from the end); the same index list is handed to pydistill.

Identical state: one tiny expert trajectory made here (the official ConvNet trained with plain SGD for
``--expert-epochs`` epochs on ``--expert-images`` real images; written in pydistill's expert format), start
epoch 0 and target epoch ``expert_epochs`` on both sides (the official ``get_network`` seeds its weights from the
clock, so the expert, and with it the loss, differ from run to run), the same real-initialised synthetic images,
the same syn_lr = lr_teacher and the same batch indices. pydistill's side is ``MTT.step`` (``lr_param="linear"``,
``dsa`` as ``--dsa``) with its batch plan replaced by those indices. float64 by default. Then one iteration
of each is timed unpatched in float32, interleaved, one thread.

``--dsa``: as distill.py (``--dsa True``, its default), every student step augments its minibatch with
``DiffAugment(x, dsa_strategy, param=ParamDiffAug())``, which is unseeded (``seed=-1``: one group for the batch
from the global RNG, then per-sample draws); here the global RNG is seeded with ``dsa_seed + n`` just before the
call of step n, and pydistill's plan gets those draws as per-sample ``DSAParams``
(``dsa_params.params_from_official_seed(..., per_sample=True)``, mode "one", so no fused scale+rotate).
float64 casts the official float32 scale/rotate grids to float64 (``dsa_params.official_with_align_corners``;
MTT's utils already passes ``align_corners=True``), so those groups carry float32 grid rounding there;
``--float32-grids`` (diagnostic) has pydistill build the same float32 grids
(``dsa_params.pydistill_with_float32_grids``) to show that this rounding is the whole difference.
``--standard-layout`` (diagnostic) hands pydistill's network its augmented batch in the standard layout, as the
official's (the crop of 1-channel images is otherwise channels-last: other convolution rounding, which ReLU
kinks can amplify in float32).

    python benchmarks/parity/mtt_step.py --official /path/to/mtt-distillation [--dataset mnist --ipc 1] [--dsa]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dsa_params  # noqa: E402
import numpy as np
import torch
import torch.nn.functional as F
from common import git_commit, import_official, max_abs, official_path, time_against_official, write_result  # noqa: E402


def official_batch_order(num_images: int, batch_syn: int, syn_steps: int, seed: int) -> list[torch.Tensor]:
    """The minibatch indices of the official inner loop: randperm split into chunks, taken with pop()."""
    gen = torch.Generator().manual_seed(seed)
    chunks, out = [], []
    for _ in range(syn_steps):
        if not chunks:
            chunks = list(torch.split(torch.randperm(num_images, generator=gen), batch_syn))
        out.append(chunks.pop())
    return out


def official_mtt_iteration(
    utils,
    reparam,
    *,
    image_syn,
    syn_lr,
    label_syn,
    start,
    target,
    batches,
    lr_img,
    lr_lr,
    dims,
    dsa_strategy=None,
    dsa_seeds=None,
):
    """One iteration of the official distill.py loop body -> (updated images, updated syn_lr, loss).

    start/target: the expert's flat parameters [P]; batches: the index tensor of each student step.
    ``dims`` = (channel, num_classes, im_size). The dtype is that of ``image_syn``. ``dsa_strategy``: augment
    each step's minibatch as distill.py (``DiffAugment(x, strategy, param=ParamDiffAug())``, unseeded), the
    global RNG seeded with ``dsa_seeds[n]`` before step n's call (None: unseeded, as the script)."""
    dtype = image_syn.dtype
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the script's torch.tensor(0.0) accumulators in the working dtype
    try:
        image_syn = image_syn.detach().clone().requires_grad_(True)
        syn_lr = syn_lr.detach().clone().requires_grad_(True)
        optimizer_img = torch.optim.SGD([image_syn], lr=lr_img, momentum=0.5)
        optimizer_lr = torch.optim.SGD([syn_lr], lr=lr_lr, momentum=0.5)
        criterion = torch.nn.CrossEntropyLoss()
        student_net = utils.get_network("ConvNet", *dims, dist=False).to(dtype)
        student_net = reparam.ReparamModule(student_net)
        student_net.train()
        num_params = sum([np.prod(p.size()) for p in (student_net.parameters())])
        target_params = target.detach().clone()
        student_params = [start.detach().clone().requires_grad_(True)]
        starting_params = start.detach().clone()
        dsa_param = utils.ParamDiffAug()
        for step, these_indices in enumerate(batches):
            x = image_syn[these_indices]
            this_y = label_syn[these_indices]
            if dsa_strategy is not None:
                x = official_dsa(utils, x, dsa_strategy, dsa_param, None if dsa_seeds is None else dsa_seeds[step])
            x = student_net(x, flat_param=student_params[-1])
            ce_loss = criterion(x, this_y)
            grad = torch.autograd.grad(ce_loss, student_params[-1], create_graph=True)[0]
            student_params.append(student_params[-1] - syn_lr * grad)
        param_loss = torch.tensor(0.0)
        param_dist = torch.tensor(0.0)
        param_loss += F.mse_loss(student_params[-1], target_params, reduction="sum")
        param_dist += F.mse_loss(starting_params, target_params, reduction="sum")
        param_loss /= num_params
        param_dist /= num_params
        param_loss /= param_dist
        grand_loss = param_loss
        optimizer_img.zero_grad()
        optimizer_lr.zero_grad()
        grand_loss.backward()
        optimizer_img.step()
        optimizer_lr.step()
    finally:
        torch.set_default_dtype(prev)
    return image_syn.detach(), syn_lr.detach(), float(grand_loss.detach())


def official_dsa(utils, x, strategy, param, seed):
    """distill.py's ``DiffAugment(x, args.dsa_strategy, param=args.dsa_param)`` with the global RNG seeded with
    ``seed`` first (None: not seeded). float64: the official float32 scale/rotate grids cast to x's dtype.
    The result in the standard layout (``dsa_params.standard_layout``: values unchanged)."""
    if seed is not None:
        torch.random.manual_seed(seed)
    if x.dtype == torch.float64:
        with dsa_params.official_with_align_corners(utils, True):
            x = utils.DiffAugment(x, strategy, param=param)
    else:
        x = utils.DiffAugment(x, strategy, param=param)
    return dsa_params.standard_layout(x)


def pydistill_dsa_plan(utils, batches, seeds, strategy, h, w, dtype):
    """pydistill per-sample ``DSAParams`` equal to the seeded official draws of each student step (drawn under
    the default dtype ``dtype``, as the official call in :func:`official_mtt_iteration`)."""
    param = utils.ParamDiffAug()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return [
            dsa_params.params_from_official_seed(
                param, s, strategy, len(idx), h, w, dtype, per_sample=True, field_dtype=dtype
            )
            for idx, s in zip(batches, seeds)
        ]
    finally:
        torch.set_default_dtype(prev)


def make_expert(utils, ds, out_dir: Path, *, epochs, lr, images, batch_size=256, seed=1):
    """A tiny expert trajectory: the official ConvNet trained with plain SGD on ``images`` real images for
    ``epochs`` epochs, flat parameters before training and after each epoch, written as pydistill's expert
    file (``out_dir/expert_00000.safetensors``). Returns the trajectory [epochs + 1, P] (float32)."""
    from safetensors.torch import save as st_save

    from pydistill.functional import flat_params
    from pydistill.methods.mtt.experts import EXPERT_FORMAT
    from pydistill.models import default_model_kwargs

    net = utils.get_network("ConvNet", ds.channel, ds.num_classes, tuple(ds.im_size), dist=False)
    gen = torch.Generator().manual_seed(seed)
    sub = torch.randperm(ds.x_train.shape[0], generator=gen)[:images]
    x_all, y_all = ds.x_train[sub], ds.y_train[sub]
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    snaps = [flat_params(net).detach().clone()]
    for _ in range(epochs):
        perm = torch.randperm(images, generator=gen)
        for b in range(0, images, batch_size):
            idx = perm[b : b + batch_size]
            loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        snaps.append(flat_params(net).detach().clone())
    traj = torch.stack(snaps).float().contiguous()
    meta = {
        "format": EXPERT_FORMAT,
        "dataset": ds.name,
        "zca": "False",
        "model": "ConvNet",
        "model_kwargs": json.dumps(default_model_kwargs("ConvNet", ds.name), sort_keys=True),
        "lr": repr(float(lr)),
        "batch_size": str(batch_size),
        "dsa": "False",
        "epochs": str(epochs),
        "dtype": "float32",
        "seed": str(seed),
        "index": "0",
        "num_params": str(traj.shape[1]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "expert_00000.safetensors").write_bytes(st_save({"trajectory": traj}, metadata=meta))
    return traj


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", help="checkout of GeorgeCazenavette/mtt-distillation (or $PYDISTILL_OFFICIAL_MTT)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--syn-steps", type=int, default=10)
    p.add_argument("--expert-epochs", type=int, default=2)
    p.add_argument("--expert-images", type=int, default=1024, help="real images the tiny expert trains on")
    p.add_argument("--batch-syn", type=int, default=None, help="None: the whole synthetic set (distill.py)")
    p.add_argument("--lr-img", type=float, default=1000.0, help="distill.py default")
    p.add_argument("--lr-lr", type=float, default=1e-5, help="distill.py default")
    p.add_argument("--lr-teacher", type=float, default=0.01, help="distill.py default")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--dsa", action="store_true", help="DSA as distill.py, the same seeded draws on both sides")
    p.add_argument(
        "--dsa-strategy", default="color_crop_cutout_flip_scale_rotate", help="distill.py --dsa_strategy default"
    )
    p.add_argument("--dsa-seed", type=int, default=0, help="student step n seeds the global RNG with this + n")
    p.add_argument(
        "--float32-grids",
        action="store_true",
        help="diagnostic (--dsa, float64): pydistill's scale/rotate grids rounded to float32 like the official",
    )
    p.add_argument(
        "--standard-layout",
        action="store_true",
        help="diagnostic (--dsa): pydistill's augmented batch in the standard layout, as the official's",
    )
    p.add_argument(
        "--perturb",
        type=float,
        default=0.0,
        help="diagnostic: also run the official iteration from the images times (1 + PERTURB * N(0, 1)) and "
        "report how far that moves its result (the problem's conditioning; e.g. 6e-8, float32 rounding)",
    )
    p.add_argument("--time-reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--name", default=None)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    if a.float32_grids and not (a.dsa and a.dtype == "float64"):
        raise SystemExit("--float32-grids is a diagnostic of --dsa --dtype float64")
    torch.set_num_threads(1)
    from pydistill.data import load_dataset
    from pydistill.functional import flat_params
    from pydistill.methods import get_method

    dtype = getattr(torch, a.dtype)
    path = official_path("mtt", a.official)
    utils, reparam = import_official(path, "utils", "reparam_module")
    ds = load_dataset(a.dataset)
    dims = (ds.channel, ds.num_classes, tuple(ds.im_size))
    tmp = Path(tempfile.mkdtemp(prefix="pydistill-mtt-parity-"))
    traj = make_expert(utils, ds, tmp, epochs=a.expert_epochs, lr=a.lr_teacher, images=a.expert_images)
    start, target = traj[0].to(dtype), traj[a.expert_epochs].to(dtype)

    cfg = dict(
        buffers=str(tmp),
        model="ConvNet",
        syn_steps=a.syn_steps,
        expert_epochs=a.expert_epochs,
        max_start_epoch=1,  # start epoch 0 on both sides
        batch_syn=a.batch_syn,
        lr_img=a.lr_img,
        lr_lr=a.lr_lr,
        lr_teacher=a.lr_teacher,
        dsa=a.dsa,
        dsa_strategy=a.dsa_strategy if a.dsa else None,
        zca=False,
        lr_param="linear",
        init="real",
    )
    m = get_method("mtt")(ds, ipc=a.ipc, device="cpu", seed=0, config=cfg)
    # the parameter layouts agree: pydistill's flat vector of the official network equals ReparamModule's
    probe = utils.get_network("ConvNet", *dims, dist=False)
    probe_flat = flat_params(probe).detach().clone()
    rp = reparam.ReparamModule(probe)  # moves the parameters into one flat vector
    assert torch.equal(rp.flat_param.detach(), probe_flat), "flat parameter layouts differ"
    assert m.buffer.num_params == rp.flat_param.numel()

    k = m.images.shape[0]
    images0 = m.images.detach().clone().to(dtype)  # real init (distill.py --pix_init real)
    labels = m.labels.clone()
    assert torch.equal(labels, torch.arange(ds.num_classes).repeat_interleave(a.ipc))  # distill.py label_syn
    batches = official_batch_order(k, a.batch_syn or k, a.syn_steps, seed=3)
    lr0 = torch.tensor(a.lr_teacher, dtype=dtype)
    strategy = a.dsa_strategy if a.dsa else None
    f32_grids = dsa_params.pydistill_with_float32_grids if a.float32_grids else contextlib.nullcontext
    layout = dsa_params.pydistill_standard_layout if a.standard_layout else contextlib.nullcontext
    seeds = [a.dsa_seed + n for n in range(a.syn_steps)] if a.dsa else None
    aug, aug_rows = None, []
    if a.dsa:
        h, w = images0.shape[2:]
        aug = pydistill_dsa_plan(utils, batches, seeds, strategy, h, w, dtype)
        from pydistill.ops.diff_augment import diff_augment

        # the augmentation alone, step by step, on the initial images (the official call under its dtype)
        for n, (idx, s) in enumerate(zip(batches, seeds)):
            prev = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                off = official_dsa(utils, images0[idx].clone(), strategy, utils.ParamDiffAug(), s)
            finally:
                torch.set_default_dtype(prev)
            with f32_grids():
                ours_x = diff_augment(images0[idx], strategy, params=aug[n])
            aug_rows.append(
                {"step": n, "seed": s, "group": dsa_params.official_group(s, strategy), "err": max_abs(ours_x, off)}
            )

    def official_from(image_syn):  # the official iteration from these images, everything else as above
        return official_mtt_iteration(
            utils,
            reparam,
            image_syn=image_syn,
            syn_lr=lr0,
            label_syn=labels,
            start=start,
            target=target,
            batches=batches,
            lr_img=a.lr_img,
            lr_lr=a.lr_lr,
            dims=dims,
            dsa_strategy=strategy,
            dsa_seeds=seeds,
        )

    ref_img, ref_lr, ref_loss = official_from(images0)

    self_err = None
    if a.perturb > 0:  # conditioning: the official iteration again from images0 * (1 + perturb * N(0, 1))
        noise = torch.randn(images0.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
        pert_img, pert_lr, pert_loss = official_from(images0 * (1 + a.perturb * noise))
        self_err = {
            "perturb": a.perturb,
            "max_abs_err_images": max_abs(pert_img, ref_img),
            "abs_err_lr": abs(float(pert_lr) - float(ref_lr)),
            "abs_err_loss": abs(pert_loss - ref_loss),
        }

    # pydistill's side: the same state in the working dtype, the same batches
    m.net.to(dtype)
    m.images = images0.clone().requires_grad_(True)
    m.opt_img = torch.optim.SGD([m.images], lr=a.lr_img, momentum=0.5)
    m.lr_param = lr0.clone().requires_grad_(True)
    m.opt_lr = torch.optim.SGD([m.lr_param], lr=a.lr_lr, momentum=0.5)
    orig_snap = m.buffer.snapshots
    m.buffer.snapshots = lambda e, epochs, device, dtype_=None: [traj[int(t)].to(dtype) for t in epochs]
    assert m.strategy == strategy
    m._plan = lambda generator=None: (batches, aug)
    with f32_grids(), layout():
        stats = m.step(0)
    del m._plan
    m.buffer.snapshots = orig_snap
    err_img, upd_img = max_abs(m.images, ref_img), max_abs(ref_img, images0)
    err_lr, upd_lr = abs(m.lr - float(ref_lr)), abs(float(ref_lr) - a.lr_teacher)
    err_loss = abs(stats["loss"] - ref_loss)
    dsa_note = f", DSA {strategy} (seeds {a.dsa_seed}..{a.dsa_seed + a.syn_steps - 1})" if a.dsa else ""
    print(
        f"MTT {a.dataset} IPC {a.ipc} N={a.syn_steps} M={a.expert_epochs} {a.dtype}{dsa_note}: "
        f"images max|ours - official| = "
        f"{err_img:.3e} (update {upd_img:.3e}); lr |ours - official| = {err_lr:.3e} (update {upd_lr:.3e}); "
        f"loss {ref_loss:.6f} vs {stats['loss']:.6f}"
    )
    if self_err is not None:
        print(
            f"  official vs official from images perturbed by {a.perturb:g} (relative): images "
            f"{self_err['max_abs_err_images']:.3e}, lr {self_err['abs_err_lr']:.3e}, "
            f"loss {self_err['abs_err_loss']:.3e}"
        )
    if a.dsa:
        print(
            "  augmentation alone per step:", ", ".join(f"{r['step']}/{r['group']}: {r['err']:.1e}" for r in aug_rows)
        )
    record = {
        "method": "mtt",
        "dataset": a.dataset,
        "ipc": a.ipc,
        "syn_steps": a.syn_steps,
        "expert_epochs": a.expert_epochs,
        "expert_images": a.expert_images,
        "start_epoch": 0,
        "batch_syn": a.batch_syn,
        "lr_img": a.lr_img,
        "lr_lr": a.lr_lr,
        "lr_teacher": a.lr_teacher,
        "lr_param": "linear",
        "dsa": bool(a.dsa),
        "dsa_strategy": strategy,
        "dsa_seeds": seeds,
        "float32_grids": bool(a.float32_grids),
        "standard_layout": bool(a.standard_layout),
        "official_vs_perturbed_official": self_err,
        "dsa_groups": [r["group"] for r in aug_rows] if a.dsa else None,
        "dsa_max_abs_err_per_step": [r["err"] for r in aug_rows] if a.dsa else None,
        "dtype": a.dtype,
        "loss_official": ref_loss,
        "loss_pydistill": stats["loss"],
        "abs_err_loss": err_loss,
        "max_abs_err_images": err_img,
        "max_abs_update_images": upd_img,
        "abs_err_lr": err_lr,
        "abs_update_lr": upd_lr,
        "official_commit": git_commit(path),
        "command": "python benchmarks/parity/mtt_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    md = (
        "| setting | dtype | loss (official / ours) | max abs err images (update) | abs err lr (update) |\n"
        "|---|---|---|---|---|\n"
        f"| MTT {a.dataset} IPC {a.ipc}, ConvNet-128, N={a.syn_steps}, M={a.expert_epochs}, start epoch 0, "
        f"batch_syn {a.batch_syn or 'all'}, {'DSA ' + strategy if a.dsa else 'no DSA'}"
        f"{' (pydistill grids in float32, diagnostic)' if a.float32_grids else ''}"
        f"{' (pydistill batch in standard layout, diagnostic)' if a.standard_layout else ''}, lr_param linear | "
        f"{a.dtype} | {ref_loss:.6g} / "
        f"{stats['loss']:.6g} | {err_img:.2e} ({upd_img:.2e}) | {err_lr:.2e} ({upd_lr:.2e}) |\n"
    )
    if self_err is not None:
        md += (
            f"\nConditioning: the official iteration from the same images times (1 + {a.perturb:g} N(0, 1)) moves "
            f"the updated images by {self_err['max_abs_err_images']:.2e} (max abs), syn_lr by "
            f"{self_err['abs_err_lr']:.2e}, the loss by {self_err['abs_err_loss']:.2e}.\n"
        )
    if a.dsa:
        md += (
            "\nDSA alone, step by step on the initial images (official seeded draw vs pydistill with its "
            "translated parameters), max abs error: "
            + ", ".join(f"step {r['step']} ({r['group']}) {r['err']:.1e}" for r in aug_rows)
            + "\n"
        )
    if a.time_reps > 0:
        ours = get_method("mtt")(ds, ipc=a.ipc, device="cpu", seed=0, config=cfg)
        img32 = ours.images.detach().clone()
        s32, t32 = traj[0], traj[a.expert_epochs]

        def official_it(r):
            perm = official_batch_order(k, a.batch_syn or k, a.syn_steps, seed=100 + r)
            official_mtt_iteration(
                utils,
                reparam,
                image_syn=img32,
                syn_lr=torch.tensor(a.lr_teacher),
                label_syn=labels,
                start=s32,
                target=t32,
                batches=perm,
                lr_img=a.lr_img,
                lr_lr=a.lr_lr,
                dims=dims,
                dsa_strategy=strategy,  # unseeded draws, as distill.py
            )

        fields, table = time_against_official(
            official_it,
            lambda r: ours.step(max(r, 0)),
            a.time_reps,
            a.warmup,
            f"MTT {a.dataset} IPC {a.ipc}, N={a.syn_steps}{', DSA' if a.dsa else ''}, one iteration, fp32",
        )
        record.update(fields)
        md += table
    if not a.no_write:
        write_result(a.name or f"mtt-{a.dataset}-ipc{a.ipc}{'-dsa' if a.dsa else ''}-{a.dtype}", record, md)
    shutil.rmtree(tmp, ignore_errors=True)  # the tiny expert
    return record


if __name__ == "__main__":
    main()
